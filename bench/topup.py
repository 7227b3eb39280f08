"""Benchmark: captured top-ups per second and latency at rising concurrency, with and without a slow gateway.

Not a test: it prints figures. It starts its own MariaDB (or uses TEST_DATABASE_URL), the gateway
sandbox as its own process, and `payment-service serve`; then, for each concurrency level, drives
POST /payments/topup from that many clients (one asyncio loop, keep-alive connections) and counts
the answers that land in a fixed window after a warm-up.

With `--gateway-latency-ms N` one run measures the service twice, on the same processes and data:
first with the sandbox answering at once, then with every charge (POST .../payment_intents) held N ms
by a sandbox `latency` fault; it prints the two side by side, the zero-latency peak, the peak at N ms
and their ratio (issue 10's target: >= 90 % at 300 ms), then drives an open-loop, paced load of
`--paced-load` x the zero-latency peak at N ms and prints its p99 (target < 600 ms at 0.8).

At the levels up to `--raw-max-clients` (each raw client holds a database connection), it also runs
one top-up's SQL directly with PyMySQL from as many clients, two ways (bench/_rawsql.py), with the
same gateway latency as a sleep between transactions:

- raw SQL, 4 tx (yardstick): the statements of 2026-11-21's top-up in its transactions. Fixed,
  so the service's share of it compares across commits (issue 9's target: >= 30 %).
- raw SQL, 2 tx (minimum): a top-up in two atomic phases around one gateway call.

Run:

    .venv/bin/python bench/topup.py [--seconds 10] [--levels 1,16,64,128,256,1000] [--gateway-latency-ms 300]
                                    [--workers 2 --worker-class gevent] [--no-raw] [--paced-load 0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procstat import cpu_seconds, family  # noqa: E402
from _rawsql import minimum_2tx, yardstick_4tx  # noqa: E402

from config.settings import DEV_JWT_SECRET  # noqa: E402
from gateway_sandbox.server import free_port, freeze_what_survived  # noqa: E402
from localparts.mariadb import MariaDBServer  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from tests.support.processes import VENV_BIN, ServiceProcess  # noqa: E402

# Keep-alive connections, as a wallet backend or a load balancer would hold them; BENCH_FORCE_CLOSE=1
# opens a connection per request instead.
FORCE_CLOSE = os.environ.get("BENCH_FORCE_CLOSE", "0") == "1"
BODY = json.dumps({"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"})


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "aud": "payment-service", "exp": int(time.time()) + 7200}, DEV_JWT_SECRET,
                      algorithm="HS256")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_level(fn, concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    """Run fn(worker_index, session-like state) in `concurrency` threads for `seconds`."""
    ok = 0
    errors = 0
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    barrier = threading.Barrier(concurrency)

    def worker(i: int) -> None:
        nonlocal ok, errors
        state: dict = {}
        mine: list[float] = []
        good = bad = 0
        barrier.wait()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            success = fn(i, state)
            mine.append(time.perf_counter() - t0)
            if success:
                good += 1
            else:
                bad += 1
        with lock:
            ok += good
            errors += bad
            latencies.extend(mine)
        if "close" in state:
            state["close"]()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, latencies, errors


# --- the HTTP load ---------------------------------------------------------------------------------


class Window:
    """Answers that land between `start` and `stop` count; the warm-up before and the drain after do not
    (at 1,000 clients an answer takes seconds, so a fixed count of requests would measure the ramp)."""

    def __init__(self, start: float, stop: float) -> None:
        self.start, self.stop = start, stop
        self.ok = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.answered = 0  # 201s over the whole run, warm-up and drain included (CPU per top-up)

    def begin(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, t0: float, outcome: str) -> None:
        self.in_flight -= 1
        done = time.perf_counter()
        if outcome != "201":
            self.errors[outcome] += 1  # an error anywhere in the run counts, warm-up and drain included
            return
        self.answered += 1
        if self.start <= done <= self.stop:
            self.ok += 1
            self.latencies.append(done - t0)


async def _post(session: aiohttp.ClientSession, api_url: str, auth: str, window: Window, t0: float) -> None:
    headers = {"Authorization": auth, "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    window.begin()
    try:
        async with session.post(f"{api_url}/payments/topup", data=BODY, headers=headers) as resp:
            body = await resp.read()
            outcome = str(resp.status)
            if resp.status != 201:
                try:
                    outcome += " " + str(json.loads(body).get("code"))
                except ValueError:
                    pass
    except (TimeoutError, aiohttp.ClientError) as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
    window.end(t0, outcome)


class MetricsSampler:
    """Reads the API's /metrics every 2 s during a level: the most database connections checked out,
    and the most callers waiting for one, that it saw. (A scrape is not free: /metrics also counts open
    records and the outbox backlog in the database.)"""

    NAMES = ("db_pool_checked_out", "db_pool_waiters")

    def __init__(self, api_url: str) -> None:
        self.url = api_url + "/metrics"
        self.max = dict.fromkeys(self.NAMES, 0.0)

    async def run(self, session: aiohttp.ClientSession, stop: float) -> None:
        while time.perf_counter() < stop:
            try:
                async with session.get(self.url) as resp:
                    text = await resp.text()
                for name in self.NAMES:
                    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
                    if m:
                        self.max[name] = max(self.max[name], float(m.group(1)))
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(2.0)


def _session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=FORCE_CLOSE)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def _closed_loop(api_url: str, clients: int, warmup: float, seconds: float) -> tuple[Window, MetricsSampler]:
    """`clients` users, each sending its next top-up as soon as the last one is answered."""
    auths = [f"Bearer {token(f'bench_{i}_{uuid.uuid4().hex[:6]}')}" for i in range(clients)]
    now = time.perf_counter()
    window = Window(now + warmup, now + warmup + seconds)
    sampler = MetricsSampler(api_url)
    async with _session(clients) as session, _session(2) as probe:

        async def user(i: int) -> None:
            while time.perf_counter() < window.stop:
                await _post(session, api_url, auths[i], window, time.perf_counter())

        await asyncio.gather(sampler.run(probe, window.stop), *(user(i) for i in range(clients)))
    return window, sampler


async def _paced(api_url: str, rate: float, warmup: float, seconds: float, users: int = 1000) -> Window:
    """An open loop: top-ups arrive every 1/rate s whatever happens to the earlier ones (a real crowd
    does not wait for the last answer). Latency counts from when a request was due, so a client that
    fell behind cannot hide a slow server."""
    auths = [f"Bearer {token(f'paced_{i}_{uuid.uuid4().hex[:6]}')}" for i in range(users)]
    start = time.perf_counter()
    window = Window(start + warmup, start + warmup + seconds)
    tasks: list[asyncio.Task[None]] = []
    async with _session(5000) as session:
        k = 0
        while True:
            due = start + k / rate
            if due >= window.stop:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, api_url, auths[k % users], window, due)))
            k += 1
        await asyncio.gather(*tasks)
    return window


# --- rows and tables -------------------------------------------------------------------------------

SERVICE = "service"
RAW_4TX = "raw SQL, 4 tx (yardstick)"
RAW_2TX = "raw SQL, 2 tx (minimum)"
NAME_W = len(RAW_4TX)


def summarize(name: str, level: int, ok: int, lat: list[float], errors: int, seconds: float, **extra) -> dict:
    row = {"name": name, "concurrency": level, "per_s": ok / seconds, "p50_ms": pct(lat, 50) * 1000,
           "p95_ms": pct(lat, 95) * 1000, "p99_ms": pct(lat, 99) * 1000, "errors": errors, **extra}
    more = "".join(f"  {k} {v}" for k, v in extra.items())
    print(f"{name:{NAME_W}s} c={level:4d}  {row['per_s']:8.1f}/s  p50 {row['p50_ms']:7.1f} ms"
          f"  p95 {row['p95_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {errors}{more}", flush=True)
    return row


def service_row(level: int, window: Window, sampler: MetricsSampler, seconds: float) -> dict:
    errors = sum(window.errors.values())
    extra: dict[str, object] = {"db_conns_max": int(sampler.max["db_pool_checked_out"]),
             "db_waiters_max": int(sampler.max["db_pool_waiters"])}
    if errors:
        extra["error_kinds"] = dict(window.errors)
    return summarize(SERVICE, level, window.ok, window.latencies, errors, seconds, **extra)


def share(part: float, whole: float) -> str:
    return f"{part / whole * 100:5.1f} %" if whole else "    - "


def sandbox_faults(sandbox_url: str, latency_ms: int) -> None:
    """No fault at 0; otherwise every charge (POST .../payment_intents) waits latency_ms, then proceeds."""
    req = urllib.request.Request(f"{sandbox_url}/_sandbox/faults", method="DELETE")
    with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - our own local sandbox
        pass
    if latency_ms <= 0:
        return
    rule = {"mode": "latency", "method": "POST", "path": r"/v1/payment_intents$", "latency_ms": latency_ms,
            "remaining": None}
    req = urllib.request.Request(f"{sandbox_url}/_sandbox/faults", data=json.dumps(rule).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        if resp.status != 201:
            raise RuntimeError(f"sandbox refused the latency rule: {resp.status}")


def peak(rows: list[dict]) -> dict:
    return max(rows, key=lambda row: row["per_s"])


_SPEED_LOOP = """
import sys, time
while True:
    t0 = time.thread_time()
    x = 0
    for i in range(50_000):
        x += i * i
    print(round((time.thread_time() - t0) * 1000, 3), flush=True)
    time.sleep(0.25)
"""


class SpeedProbe:
    """This machine's speed during a window: a child process times a fixed pure-Python loop every 0.25 s in
    CPU time (so a busy machine's run queue does not count, only how fast a core runs it), about 1 % of one
    core. Its neighbours on the host move that by a half within minutes; printed beside each window, it
    tells a slower service from a slower machine. Milliseconds per loop, median: lower is faster."""

    def __enter__(self) -> SpeedProbe:
        self.proc = subprocess.Popen([sys.executable, "-c", _SPEED_LOOP], stdout=subprocess.PIPE, text=True)
        self.samples: list[float] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.samples.append(float(line))

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=5)

    @property
    def ms(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


class CpuMeter:
    """CPU each part of the bench spent per answered top-up over a window: the API (all its processes),
    the sandbox, MariaDB (when the bench started it) and this load generator. The parts besides the API
    run unchanged code, so between two commits they are a yardstick for the machine's speed."""

    def __init__(self, api_pid: int, sandbox_pid: int, db_pid: int | None) -> None:
        self.parts: dict[str, Callable[[], float]] = {
            "api": lambda: cpu_seconds(family(api_pid)), "sandbox": lambda: cpu_seconds(family(sandbox_pid)),
            "load generator": time.process_time}
        if db_pid is not None:
            self.parts["mariadb"] = lambda: cpu_seconds([db_pid])

    def __enter__(self) -> CpuMeter:
        self.start = {name: read() for name, read in self.parts.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = {name: read() - self.start[name] for name, read in self.parts.items()}

    def per_topup_ms(self, answered: int) -> dict[str, float]:
        return {name: spent * 1000 / answered for name, spent in self.spent.items()} if answered else {}


def _cpu_over(paced: dict[str, float], peak: dict[str, float]) -> float:
    """How much more CPU (all parts) a top-up cost in a paced window than in the peak's, in %."""
    return (sum(paced.values()) / sum(peak.values()) - 1) * 100 if paced and peak else float("nan")


def _cpu_text(per: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f}" for name, ms in per.items()) + f" (total {sum(per.values()):.2f})"


def target_rounds(api_url: str, sandbox_url: str, latency_ms: int, clients: tuple[int, int], loads: list[float],
                  rounds: int, warmup: float, seconds: float, meter: Callable[[], CpuMeter],
                  fixed_clients: bool = False, zero_control: bool = False) -> list[dict]:
    """Issue 10's targets measured in rounds, each round on its own: the 0 ms peak (closed loop, clients[0]),
    then the peak at latency_ms, then the open loop at each of `loads` x that round's 0 ms peak. A round
    takes about a minute, so its windows meet the same machine; the level sweep's best window, by contrast,
    is the luckiest of five, and a paced run minutes later may meet a slower machine.

    A slow gateway needs more clients in flight for the same rate (Little's law: the rate times the time
    each spends). Unless `fixed_clients`, the latency window runs at least the 0 ms window's clients plus
    1.25 x the round's 0 ms peak x the latency, so that too few clients never cap it below that peak
    (the sweep's best level at 300 ms was 128 in one run, which capped the window at ~200/s).

    With `zero_control`, each paced window is followed by the same offered rate with the gateway at 0 ms:
    what the machine's own queue adds to the latency at that rate, with no gateway wait to hide behind."""
    paced_windows = [(latency_ms, "paced"), *([(0, "paced_zero")] if zero_control else [])]
    out = []
    for k in range(1, rounds + 1):
        row: dict = {"round": k}
        for lat, key in ((0, "peak0"), (latency_ms, "peak_n")):
            c = clients[0]
            if lat:
                needed = clients[0] + math.ceil(1.25 * row["peak0"] * lat / 1000)
                c = clients[1] if fixed_clients else max(clients[1], needed)
                row["peak_n_clients"] = c
            sandbox_faults(sandbox_url, lat)
            with SpeedProbe() as speed, meter() as cpu:
                window, _ = asyncio.run(_closed_loop(api_url, c, max(warmup, c / 150), seconds))
            row[f"{key}_speed_ms"] = speed.ms
            row[key] = window.ok / seconds
            row[f"{key}_cpu_ms"] = cpu.per_topup_ms(window.answered)
            row[f"{key}_errors"] = sum(window.errors.values())
        row["ratio"] = row["peak_n"] / row["peak0"] if row["peak0"] else 0.0
        row["paced"], row["paced_zero"] = [], []
        for load in loads:
            for lat, key in paced_windows:
                sandbox_faults(sandbox_url, lat)
                with SpeedProbe() as probe, meter() as cpu:
                    window = asyncio.run(_paced(api_url, load * row["peak0"], warmup, seconds))
                row[key].append({"load": load, "gateway_ms": lat, "offered_per_s": load * row["peak0"],
                                 "per_s": window.ok / seconds, "p50_ms": pct(window.latencies, 50) * 1000,
                                 "p99_ms": pct(window.latencies, 99) * 1000, "errors": sum(window.errors.values()),
                                 "speed_ms": probe.ms, "cpu_ms": cpu.per_topup_ms(window.answered)})
        paced_text = "; ".join(f"{p['load']:g} x at {p['gateway_ms']} ms: {p['offered_per_s']:.1f}/s offered, "
                               f"{p['per_s']:.1f}/s answered, p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms, "
                               f"errors {p['errors']} [speed {p['speed_ms']:.1f} ms]"
                               for p in row["paced"] + row["paced_zero"])
        print(f"round {k}: 0 ms {row['peak0']:.1f}/s [speed {row['peak0_speed_ms']:.1f} ms], {latency_ms} ms "
              f"{row['peak_n']:.1f}/s at c={row['peak_n_clients']} [speed {row['peak_n_speed_ms']:.1f} ms], "
              f"ratio {row['ratio'] * 100:.1f} %; "
              f"{paced_text}", flush=True)
        print(f"  CPU ms per top-up: 0 ms peak: {_cpu_text(row['peak0_cpu_ms'])}; "
              + "; ".join(f"paced {p['load']:g} x at {p['gateway_ms']} ms: {_cpu_text(p['cpu_ms'])}"
                          for p in row["paced"] + row["paced_zero"]), flush=True)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window of each level")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds before the window (at least clients/150: a deep queue needs time to settle)")
    ap.add_argument("--levels", default="1,16,64,128,256,1000", help="concurrency levels, comma-separated")
    ap.add_argument("--workers", type=int, default=2, help="API gunicorn workers")
    ap.add_argument("--worker-class", default="gevent", help="gevent (default of serve), gthread or sync")
    ap.add_argument("--threads", type=int, default=8, help="gthread: API threads per worker")
    ap.add_argument("--worker-connections", type=int, default=1000, help="gevent: connections per worker")
    ap.add_argument("--gateway-latency-ms", type=int, default=0,
                    help="also run every level with this gateway latency per charge (a sandbox latency rule for "
                         "the service, a sleep between transactions for the raw-SQL lines), after the 0 ms run")
    ap.add_argument("--paced-load", default="0.8",
                    help="with --gateway-latency-ms: an open-loop run at this fraction of the zero-latency peak "
                         "(0: none); several, comma-separated (0.6,0.7,0.8), run one after the other")
    ap.add_argument("--paced-rate", type=float, default=0.0,
                    help="with --gateway-latency-ms: the open-loop run at this many top-ups/s instead")
    ap.add_argument("--target-rounds", type=int, default=0,
                    help="with --gateway-latency-ms: after the levels, this many rounds of issue 10's three windows "
                         "back to back (0 ms peak, peak at N ms, paced at --paced-load x that round's 0 ms peak), "
                         "the 0 ms peak at the concurrency of its best level, the N ms peak at that of its own best "
                         "level or more if the round's 0 ms peak needs more in flight (or both at --target-clients), "
                         "with the machine's speed and the CPU per top-up of each part")
    ap.add_argument("--paced-zero-control", action="store_true",
                    help="with --target-rounds: each paced window again with the gateway at 0 ms, same offered rate "
                         "(the queue the machine builds by itself at that rate)")
    ap.add_argument("--target-clients", type=int, default=0,
                    help="clients of both --target-rounds closed-loop windows, exactly (default: see --target-rounds)")
    ap.add_argument("--db-in-memory", action="store_true",
                    help="MariaDB (durable settings) with its data dir in /dev/shm: the figures then carry no "
                         "stall of this VM's disk")
    ap.add_argument("--db-socket", action="store_true",
                    help="the API reaches MariaDB by its Unix socket, as a database on the same host is reached, "
                         "instead of loopback TCP")
    ap.add_argument("--api-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the API (repeatable), e.g. API_CPU_SLOTS=0")
    ap.add_argument("--raw-max-clients", type=int, default=64,
                    help="run the raw-SQL lines only at levels up to this (each raw client holds a connection)")
    ap.add_argument("--no-raw", action="store_true", help="no raw-SQL lines")
    ap.add_argument("--raw-only", action="store_true", help="run only the two raw-SQL lines (no sandbox, no API)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    # The load generator keeps every latency it measured: its own full collections would grow into pauses
    # that it would then measure as the service's latency. The same remedy as the sandbox's.
    gc.callbacks.append(freeze_what_survived)
    latencies = [0] + ([args.gateway_latency_ms] if args.gateway_latency_ms > 0 else [])

    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        server = MariaDBServer(durable=True, in_memory=args.db_in_memory).start()
        url = server.url
    api_db_url = url
    if server is not None and args.db_socket:
        api_db_url = url.replace(f"@127.0.0.1:{server.port}/", "@localhost/") + f"&unix_socket={server.socket_path}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-topup-"))
    migrate.upgrade(url)
    parts = urlsplit(url.replace("mysql+pymysql", "mysql"))
    db = {"host": parts.hostname, "port": parts.port or 3306, "user": parts.username, "password": parts.password,
          "database": parts.path.lstrip("/")}

    sandbox = api = None
    sandbox_url = api_url = ""
    rows: dict[int, dict[str, list[dict]]] = {lat: {SERVICE: [], RAW_4TX: [], RAW_2TX: []} for lat in latencies}
    paced: list[dict] = []
    rounds: list[dict] = []
    load_before = load_average()
    try:
        if not args.raw_only:
            sb_port, api_port = free_port(), free_port()
            sandbox = ServiceProcess([str(VENV_BIN / "payment-service"), "sandbox", "--port", str(sb_port)], {},
                                     REPO, tmp / "sandbox.log")
            env = {
                "DATABASE_URL": api_db_url, "STRIPE_API_BASE": f"http://127.0.0.1:{sb_port}/stripe",
                "RAZORPAY_API_BASE": f"http://127.0.0.1:{sb_port}/razorpay",
                "RATE_LIMIT_USER": "1000000/minute", "RISK_VELOCITY_MAX_ATTEMPTS": "100000000",
                "RISK_VELOCITY_MAX_AMOUNT": "100000000000000", "LOG_LEVEL": "WARNING",
                **dict(kv.split("=", 1) for kv in args.api_env),
            }
            api = ServiceProcess([str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{api_port}",
                                  "--workers", str(args.workers), "--worker-class", args.worker_class,
                                  "--threads", str(args.threads), "--worker-connections",
                                  str(args.worker_connections)], env, REPO, tmp / "api.log")
            api_url, sandbox_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sb_port}"
            sandbox.wait_http(sandbox_url + "/")
            api.wait_http(api_url + "/healthz")
            shape = (f"{args.workers} x {args.worker_class}, "
                     + (f"{args.worker_connections} connections" if args.worker_class == "gevent"
                        else f"{args.threads} threads"))
            print(f"MariaDB {url.split('@')[-1]}, sandbox :{sb_port}, API :{api_port} ({shape}), ", end="")
        else:
            print(f"raw SQL only; MariaDB {url.split('@')[-1]}, ", end="")
        print(f"window {args.seconds:g} s per level after a warm-up, gateway latency {latencies} ms, "
              f"{os.cpu_count()} cores, load average {load_before}; logs in {tmp}\n", flush=True)
        if api is not None:
            sandbox_faults(sandbox_url, 0)
            asyncio.run(_closed_loop(api_url, 4, 0.0, 2.0))  # warm-up: connections, caches
        # Level by level, each latency in turn: the two columns of a level are measured a minute apart, so
        # a change in the machine's load (other work on it) falls on both rather than on one column.
        for c in levels:
            for lat in latencies:
                if len(latencies) > 1:
                    print(f"[gateway latency {lat} ms, load average {load_average()}]", flush=True)
                if api is not None:
                    sandbox_faults(sandbox_url, lat)
                    warmup = max(args.warmup, c / 150)
                    window, sampler = asyncio.run(_closed_loop(api_url, c, warmup, args.seconds))
                    rows[lat][SERVICE].append(service_row(c, window, sampler, args.seconds))
                if args.no_raw or c > args.raw_max_clients:
                    continue
                for name, make in ((RAW_4TX, yardstick_4tx), (RAW_2TX, minimum_2tx)):
                    result = run_level(make(db, lat / 1000.0), c, args.seconds)
                    rows[lat][name].append(summarize(name, c, *result, args.seconds))
                if api is not None:
                    s = rows[lat][SERVICE][-1]["per_s"]
                    print(f"{'':{NAME_W}s} c={c:4d}  service share: {share(s, rows[lat][RAW_4TX][-1]['per_s'])} "
                          f"of 4 tx, {share(s, rows[lat][RAW_2TX][-1]['per_s'])} of 2 tx", flush=True)
            print(flush=True)
        loads = [float(x) for x in args.paced_load.split(",") if float(x) > 0]
        if api is not None and len(latencies) > 1 and (loads or args.paced_rate > 0):
            runs = [(args.paced_rate, "as asked")] if args.paced_rate else [
                (load * peak(rows[0][SERVICE])["per_s"], f"{load:g} x the 0 ms peak") for load in loads]
            for rate, how in runs:
                print(f"--- paced: {rate:.1f} top-ups/s arriving (open loop, {how}), "
                      f"gateway latency {latencies[-1]} ms ---", flush=True)
                window = asyncio.run(_paced(api_url, rate, args.warmup, args.seconds))
                run = summarize("paced", int(rate), window.ok, window.latencies, sum(window.errors.values()),
                                args.seconds, in_flight_max=window.max_in_flight)
                paced.append({**run, "offered_per_s": rate, "how": how})
                print(flush=True)
        if api is not None and len(latencies) > 1 and args.target_rounds > 0:
            best = [peak(rows[lat][SERVICE])["concurrency"] if rows[lat][SERVICE] else 256 for lat in latencies]
            clients = (args.target_clients or best[0], args.target_clients or best[-1])
            at_least = "" if args.target_clients else f"at least {clients[1]}, more if the round's 0 ms peak needs it"
            print(f"--- {args.target_rounds} target rounds: 0 ms peak (c={clients[0]}), {latencies[-1]} ms peak "
                  f"(c={at_least or clients[1]}), "
                  f"paced at {', '.join(f'{x:g}' for x in loads)} x the round's 0 ms peak (speed: ms for a fixed "
                  f"loop, lower is faster) ---", flush=True)
            db_pid = server.proc.pid if server is not None and server.proc is not None else None
            assert sandbox is not None
            api_pid, sandbox_pid = api.proc.pid, sandbox.proc.pid
            rounds = target_rounds(api_url, sandbox_url, latencies[-1], clients, loads, args.target_rounds,
                                   args.warmup, args.seconds, lambda: CpuMeter(api_pid, sandbox_pid, db_pid),
                                   fixed_clients=bool(args.target_clients), zero_control=args.paced_zero_control)
            print(flush=True)
    finally:
        if api is not None:
            api.stop()
        if sandbox is not None:
            sandbox.stop()
        if server is not None:
            server.stop()

    load_after = load_average()
    print(f"load average: {load_before} before, {load_after} after")
    for lat in latencies:
        print(f"peaks at gateway latency {lat} ms (top-ups/s at the best level):")
        for name, r in rows[lat].items():
            if r:
                p = peak(r)
                print(f"  {name:{NAME_W}s} {p['per_s']:8.1f}/s at c={p['concurrency']}")
    base = rows[0]
    if base[SERVICE] and base[RAW_4TX]:
        s = peak(base[SERVICE])["per_s"]
        print(f"service share of the {RAW_4TX} ceiling (0 ms): {share(s, peak(base[RAW_4TX])['per_s']).strip()}"
              f" (issue 9 target >= 30 %)")
    if len(latencies) > 1 and base[SERVICE]:
        slow = rows[latencies[-1]][SERVICE]
        print(f"\nside by side (service; closed loop, c clients):\n"
              f"| clients | 0 ms: /s | p50 ms | p99 ms | {latencies[-1]} ms: /s | p50 ms | p99 ms | errors |"
              f" db conns max |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for a, b in zip(base[SERVICE], slow, strict=True):
            print(f"| {a['concurrency']} | {a['per_s']:.1f} | {a['p50_ms']:.0f} | {a['p99_ms']:.0f} | "
                  f"{b['per_s']:.1f} | {b['p50_ms']:.0f} | {b['p99_ms']:.0f} | {a['errors']} / {b['errors']} | "
                  f"{a['db_conns_max']} / {b['db_conns_max']} |")
        p0, pn = peak(base[SERVICE]), peak(slow)
        print(f"\nzero-latency peak {p0['per_s']:.1f}/s (c={p0['concurrency']}); peak at {latencies[-1]} ms "
              f"{pn['per_s']:.1f}/s (c={pn['concurrency']}); ratio {share(pn['per_s'], p0['per_s']).strip()} "
              f"(issue 10 target >= 90 %)")
        top = slow[-1]
        print(f"at c={top['concurrency']} and {latencies[-1]} ms: {top['per_s']:.1f}/s, errors {top['errors']}, "
              f"p99 {top['p99_ms']:.0f} ms, at most {top['db_conns_max']} database connections checked out")
        for run in paced:
            print(f"paced at {run['offered_per_s']:.1f}/s offered ({run['how']}): "
                  f"{run['per_s']:.1f}/s answered 201, p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms "
                  f"(target < 600 ms at 0.8), errors {run['errors']}")
    if rounds:
        ratios = [r["ratio"] * 100 for r in rounds]
        print(f"\ntarget rounds ({len(rounds)}): ratio median {statistics.median(ratios):.1f} % (each: "
              f"{', '.join(f'{x:.1f}' for x in ratios)}; target >= 90 %, met in {sum(x >= 90 for x in ratios)})")
        for i, load in enumerate(loads):
            p99s = [r["paced"][i]["p99_ms"] for r in rounds]
            print(f"  paced at {load:g} x the round's 0 ms peak: p99 median {statistics.median(p99s):.0f} ms (each: "
                  f"{', '.join(f'{x:.0f}' for x in p99s)}; under 600 ms in {sum(x < 600 for x in p99s)}), errors "
                  f"{sum(r['paced'][i]['errors'] for r in rounds)}")
            # What decides the tail (docs/benchmarks.md, issue 10): how much more CPU a paced top-up costs
            # than one in the saturated window its rate was taken from, so 0.8 x the rate may ask for
            # more than 80 % of the machine. Rounds in order of that excess, each with its p99.
            excess = sorted((_cpu_over(r["paced"][i]["cpu_ms"], r["peak0_cpu_ms"]), r["paced"][i]["p99_ms"])
                            for r in rounds)
            print("    by the paced top-up's CPU over the 0 ms peak's: "
                  + ", ".join(f"{x:+.1f} % {p99:.0f} ms" for x, p99 in excess))
            if rounds[0]["paced_zero"]:
                zero = [r["paced_zero"][i]["p99_ms"] for r in rounds]
                print(f"  the same rate with the gateway at 0 ms: p99 median {statistics.median(zero):.0f} ms (each: "
                      f"{', '.join(f'{x:.0f}' for x in zero)})")
    print(json.dumps({"gateway_latency_ms": latencies, "target_rounds": rounds,
                      "load_average": [load_before, load_after],
                      "service": {lat: r[SERVICE] for lat, r in rows.items()},
                      "raw_sql": {lat: r[RAW_4TX] for lat, r in rows.items()},
                      "raw_sql_2tx": {lat: r[RAW_2TX] for lat, r in rows.items()}, "paced": paced},
                     default=lambda x: round(x, 2)))


if __name__ == "__main__":
    main()
