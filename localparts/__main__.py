"""``python -m localparts up``: a MariaDB server and a Tansu broker until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from localparts.broker import TansuBroker
from localparts.mariadb import MariaDBServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localparts")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start MariaDB and the broker, print their addresses, wait for Ctrl-C")
    up.add_argument("--db-port", type=int, default=0, help="MariaDB port (default: a free one)")
    up.add_argument("--kafka-port", type=int, default=0, help="broker port (default: a free one)")
    up.add_argument("--fast", action="store_true", help="relax fsync (durable=False), as the tests do")
    args = parser.parse_args(argv)

    stop = threading.Event()
    # handled explicitly: a shell starting us in the background may have set SIGINT to ignored
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with (
            MariaDBServer(port=args.db_port, durable=not args.fast) as db,
            TansuBroker(port=args.kafka_port) as broker,
        ):
            print(f"DATABASE_URL={db.url}")
            print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}")
            print(f"# admin: {db.admin_url}   broker log: {broker.log_path}", file=sys.stderr)
            print("# Ctrl-C to stop (data is thrown away)", file=sys.stderr, flush=True)
            sys.stdout.flush()
            stop.wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
