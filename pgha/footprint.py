"""Keeping the idle node daemon small.

glibc gives each new thread its own malloc arena (up to eight per core),
and each arena keeps its freed memory resident: a daemon whose handful of
threads allocate little pays megabytes for them. Two arenas serve its
threads, which mostly sleep, without contention that matters.
"""
from __future__ import annotations

import ctypes

M_ARENA_MAX = -8        # glibc's mallopt parameter number
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); False where
    the C library is not glibc (the cap is a saving, never a requirement)."""
    try:
        return ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):
        return False
