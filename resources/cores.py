"""How many cores this process may use: the one count every thread pool is sized from."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` where
    that is set (a process given a share of the machine, as each test worker is)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    share = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(share)) if share.isdigit() and int(share) > 0 else cores
