"""Running the sandbox: in the foreground (`payment-service sandbox`) or in a thread (tests, `dev`)."""

from __future__ import annotations

import gc
import socket
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import create_sandbox_app
from .config import SandboxConfig
from .core import EXTENSION_KEY, Sandbox


class QuietHandler(WSGIRequestHandler):
    """HTTP/1.1 keep-alive like the real gateways (werkzeug defaults to one connection per
    request), and no access log line per request: at benchmark rates it costs more than the request."""

    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SandboxServer:
    """A sandbox on a free loopback port, served by a threaded WSGI server in a daemon thread."""

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.config = config or SandboxConfig()
        self.config.public_url = f"http://{self.host}:{self.port}"
        self.app = create_sandbox_app(self.config)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stripe_api_base(self) -> str:
        return self.url + "/stripe"

    @property
    def razorpay_api_base(self) -> str:
        return self.url + "/razorpay"

    @property
    def sandbox(self) -> Sandbox:
        sandbox: Sandbox = self.app.extensions[EXTENSION_KEY]
        return sandbox

    def start(self) -> SandboxServer:
        self._server = make_server(self.host, self.port, self.app, threaded=True, request_handler=QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def freeze_what_survived(phase: str, info: dict[str, Any]) -> None:
    """After each full collection, what survived it leaves the collector's scans (`gc.freeze`).

    The standalone sandbox keeps every object and event it ever made, so without this each full
    collection walks a larger heap, with every request of the process waiting: measured at 120
    charges/s, 28 ms after 10 s and 418 ms after 90 s, and a benchmark's latencies grew with how long
    it had run (`bench/topup.py`'s paced run comes last). Frozen objects are still freed by their
    reference counts; only a cycle that was alive at a freeze is never collected.
    """
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def serve_forever(config: SandboxConfig, host: str, port: int, connections: int = 5000) -> None:
    """The standalone sandbox under gunicorn: one process (the state lives in it), and HTTP keep-alive
    like the real gateways (Werkzeug's server closes every connection, which would make each SDK call
    pay a TCP handshake that Stripe and Razorpay do not charge).

    The gevent worker: each request is a greenlet, so a thousand requests held by a `latency` fault
    cost a thousand sleeping greenlets, not a thousand threads. `connections` bounds the keep-alive
    connections held at once: every worker of every API instance keeps up to GATEWAY_MAX_CONNECTIONS
    open to it. The caller must have monkey-patched the process first (`payment-service sandbox` does)."""
    from gunicorn.app.base import BaseApplication

    config.public_url = config.public_url if config.public_url else f"http://{host}:{port}"

    class _Sandbox(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{host}:{port}", "workers": 1, "worker_class": "gevent", "worker_connections": connections,
                "keepalive": 75, "accesslog": None, "loglevel": "warning", "timeout": 120, "backlog": 4096,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Built in the worker, after the fork: the webhook thread must live where the state is.
            app = create_sandbox_app(config)
            gc.callbacks.append(freeze_what_survived)
            return app

    _Sandbox().run()
