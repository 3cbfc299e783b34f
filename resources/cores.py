"""How many cores this process may use (the one count every thread pool is sized from),
and the background priority a stage that should only fill idle cores runs at."""

from __future__ import annotations

import os
import sys
import threading


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` where
    that is set (a process given a share of the machine, as each test worker is)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    share = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(share)) if share.isdigit() and int(share) > 0 else cores


BACKGROUND_NICENESS = 19  # the lowest priority: a thread that only takes idle CPU


def thread_niceness() -> int:
    """The calling thread's nice value (Linux keeps one per thread); 0 where unknown."""
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):
        return 0


def background_priority_works() -> bool:
    """Whether ``run_in_background_priority`` can lower one thread alone (Linux)."""
    return sys.platform.startswith("linux")


def run_in_background_priority() -> bool:
    """Give the calling thread (and the threads it starts from now on) the lowest CPU
    priority, so it runs on what the other threads of the machine leave idle.

    Linux only: there ``setpriority`` on a thread id changes that thread alone, and new
    threads inherit it. Lowering one's own priority needs no privilege. Returns whether
    it took effect.
    """
    if not background_priority_works():
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except OSError:
        return False
    return True
