"""A throw-away MariaDB server for tests and the local run.

    with MariaDBServer(durable=False) as db:
        engine = create_engine(db.url)

The server lives in a temporary directory, listens on 127.0.0.1 on a free port (and on a
Unix socket inside that directory), and is removed with everything in it on ``stop()``.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from urllib.parse import quote_plus

import pymysql

from localparts import _proc

_DB_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_START_DEADLINE = 60.0


class MariaDBUnavailable(RuntimeError):
    """MariaDB is not installed and cannot be installed here, or it failed to start."""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )


def ensure_mariadb_installed() -> tuple[str, str]:
    """Return the paths of mariadbd and mariadb-install-db, installing Debian's package if we may."""
    mariadbd, install_db = _find("mariadbd"), _find("mariadb-install-db")
    if mariadbd and install_db:
        return mariadbd, install_db
    apt_get = shutil.which("apt-get")
    if not (_is_root() and apt_get):
        raise MariaDBUnavailable(
            "mariadbd is not installed. Install it (Debian/Ubuntu: `sudo apt-get install mariadb-server`, "
            "or run scripts/install-system-deps.sh as root), or point TEST_DATABASE_URL at a MySQL/MariaDB server."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt_get, "update", "-qq"], [apt_get, "install", "-y", "-qq", "mariadb-server"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise MariaDBUnavailable(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    mariadbd, install_db = _find("mariadbd"), _find("mariadb-install-db")
    if not (mariadbd and install_db):
        raise MariaDBUnavailable("mariadb-server was installed but mariadbd / mariadb-install-db are not on PATH")
    return mariadbd, install_db


def _unix_socket_accepts(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def check_database_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r}: use letters, digits and underscores only")
    return name


_SHM = "/dev/shm"  # noqa: S108 - a private dir made in it by mkdtemp (mode 0700), not a fixed file name


class MariaDBServer:
    """A private mariadbd: temporary data dir, free loopback port, database ``payments`` and its user.

    ``durable=False`` relaxes fsync (``innodb_flush_log_at_trx_commit=2``) for fast tests.
    ``die_with_parent=True`` asks Linux to SIGTERM mariadbd if the thread that started it dies.
    ``in_memory=True`` puts the data dir in /dev/shm where there is one (benchmarks of what runs beside
    the database, whose figures should not carry the disk's stalls).
    """

    def __init__(
        self,
        *,
        database: str = "payments",
        user: str = "payments",
        password: str | None = None,
        durable: bool = True,
        port: int = 0,
        die_with_parent: bool = True,
        in_memory: bool = False,
    ) -> None:
        self.database = check_database_name(database)
        self.user = check_database_name(user)
        self.password = password or secrets.token_urlsafe(16)
        self.durable = durable
        self.requested_port = port
        self.die_with_parent = die_with_parent
        self.in_memory = in_memory and os.path.isdir(_SHM)
        self.port = 0
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # -- paths and URLs -------------------------------------------------------------------

    @property
    def _dir(self) -> str:
        if self.tmpdir is None:
            raise RuntimeError("MariaDBServer is not started")
        return self.tmpdir

    @property
    def datadir(self) -> str:
        return os.path.join(self._dir, "data")

    @property
    def socket_path(self) -> str:
        return os.path.join(self._dir, "mysqld.sock")

    @property
    def error_log(self) -> str:
        return os.path.join(self._dir, "error.log")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL for the application user on the given database."""
        return (
            f"mysql+pymysql://{quote_plus(self.user)}:{quote_plus(self.password)}"
            f"@127.0.0.1:{self.port}/{database}?charset=utf8mb4"
        )

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL for root (no password) over TCP, no default database."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/?charset=utf8mb4"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> MariaDBServer:
        if self.proc is not None:
            return self
        mariadbd, install_db = ensure_mariadb_installed()
        self.tmpdir = tempfile.mkdtemp(prefix="ps-mariadb-", dir=_SHM if self.in_memory else None)
        atexit.register(self.stop)
        try:
            self._install_db(install_db)
            self._start_mariadbd(mariadbd)
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        return self

    def _install_db(self, install_db: str) -> None:
        cmd = [
            install_db,
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if _is_root():
            cmd.append("--user=root")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise MariaDBUnavailable(
                f"mariadb-install-db failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )

    def _command(self, mariadbd: str, port: int) -> list[str]:
        cmd = [
            mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--log-error={self.error_log}",
            f"--pid-file={os.path.join(self._dir, 'mariadbd.pid')}",
            # The binary log in row format, as MySQL 8 has it on by default: the outbox relay wakes on
            # commit from it (docs/events.md); server-id is what a binlog reader registers against.
            f"--log-bin={os.path.join(self._dir, 'binlog')}",
            "--binlog-format=ROW",
            "--server-id=1",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=256M",
        ]
        if not self.durable:
            cmd += ["--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0"]
        if _is_root():
            cmd.append("--user=root")
        return cmd

    def _start_mariadbd(self, mariadbd: str) -> None:
        # A free port can be taken between picking it and binding it: retry with another one.
        attempts = 1 if self.requested_port else 3
        last_error = ""
        for _ in range(attempts):
            port = self.requested_port or _proc.free_port()
            self.proc = _proc.spawn(
                self._command(mariadbd, port),
                os.path.join(self._dir, "mariadbd.out"),
                die_with_parent=self.die_with_parent,
            )
            self.port = port
            ready, last_error = self._wait_ready()
            if ready:
                return
            _proc.kill(self.proc)
            self.proc = None
        raise MariaDBUnavailable(
            f"mariadbd did not accept connections within {_START_DEADLINE:.0f}s (last error: {last_error})\n"
            f"--- {self.error_log} (tail) ---\n{_proc.tail(self.error_log)}"
        )

    def _wait_ready(self) -> tuple[bool, str]:
        deadline = time.monotonic() + _START_DEADLINE
        last_error = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False, f"mariadbd exited with code {self.proc.returncode if self.proc else '?'}"
            if not _unix_socket_accepts(self.socket_path):
                # checked first: PyMySQL leaks its socket when the Unix connect itself fails
                last_error = f"{self.socket_path} does not accept connections yet"
                time.sleep(0.1)
                continue
            try:
                conn = self._root_connection()
            except pymysql.MySQLError as exc:
                last_error = str(exc)
                time.sleep(0.1)
                continue
            conn.close()
            return True, ""
        return False, last_error

    def _root_connection(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=self.socket_path,
            user="root",
            password="",
            database=database,
            charset="utf8mb4",
            connect_timeout=2,
            autocommit=True,
        )

    def _bootstrap(self) -> None:
        conn = self._root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
                for host in ("%", "localhost"):
                    cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
                    cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", (self.user, host))
                cur.execute("FLUSH PRIVILEGES")
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create (if missing) an empty database on this server and return its SQLAlchemy URL."""
        check_database_name(name)
        conn = self._root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
        finally:
            conn.close()
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        check_database_name(name)
        conn = self._root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM mariadbd (SIGKILL after 20 s) and remove the temporary directory. Idempotent."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        _proc.terminate(proc, grace=20.0)
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _server_connection(url: str) -> pymysql.connections.Connection:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    socket_path = u.query.get("unix_socket")
    return pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=10,
        unix_socket=str(socket_path) if socket_path else None,
    )


def create_database_at(url: str, name: str) -> str:
    """Create an empty database on the server of ``url`` (its user needs CREATE) and return a URL for it."""
    from sqlalchemy.engine import make_url

    check_database_name(name)
    conn = _server_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    finally:
        conn.close()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database_at(url: str, name: str) -> None:
    """Drop a database on the server of ``url``."""
    check_database_name(name)
    conn = _server_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()
