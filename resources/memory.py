"""Give freed heap memory back to the operating system between model stages.

glibc keeps freed small allocations in its heap for reuse; after decoding an episode's
blocks that is about 100 MB which the next stage (diarisation, with its own large
libraries) cannot use, so it would count twice in the model step's peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim_heap() -> bool:
    """``malloc_trim(0)`` where glibc provides it; True when memory was returned."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
