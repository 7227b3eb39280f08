"""Background processes: the outbox relay (relay.py), the webhook applier and scheduled jobs (jobs.py).

Here: the relay process's tuning.
"""

from __future__ import annotations

import sys

from ..startup import freeze_startup_heap

# The relay's process hands the GIL between its threads (the loop, the binlog watcher, the marker)
# every 0.5 ms instead of Python's 5 ms: a wake-up from the watcher reaches the loop sooner. Measured
# (bench/relay.py, 1,000 events/s): binlog commit -> ack p50 3.8 ms against 6.3 to 7.1 ms.
GIL_SWITCH_INTERVAL = 0.0005


def tune_process() -> None:
    """For a process whose work is the relay (`payment-service relay`, bench/relay.py), once started:
    the GIL switch interval above, and start-up's heap out of the garbage collector's full scans."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    freeze_startup_heap()
