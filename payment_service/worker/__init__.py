"""Background processes: the outbox relay (relay.py), the webhook applier and scheduled jobs (jobs.py)."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Once a background process has started: move what start-up built (modules, the SDKs,
    SQLAlchemy's metadata) out of the garbage collector's full scans, which then see only what the
    loop makes. Measured on the relay (bench/relay.py): a full collection of the start-up heap held
    the GIL ~90 ms, the one stall in the commit -> broker ack tail."""
    gc.collect()
    gc.freeze()
