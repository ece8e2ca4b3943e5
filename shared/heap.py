"""Keeping freed memory for the next request instead of handing it back to the kernel (glibc malloc).

A 2 MP photo passes through a classical stage as a few 24 MB float arrays. By default glibc returns such
freed memory to the kernel once more than twice the largest recent allocation is free at the top of the
heap, so every request page-faults (and the kernel zeroes) its arrays again: on a hop that does little
work, that is most of the stage's time (``bench/simple.py``'s hops). A service that serves photos one
after another keeps them instead, up to ``HEAP_KEEP_MB``: its resident memory then stays near its
peak, which its memory limit must allow anyway.
"""
from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("restore.heap")

M_TRIM_THRESHOLD = -1                   # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024   # glibc's ceiling on 64-bit: bigger blocks are always mmapped


def _mallopt():
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        log.info("not glibc: the HEAP_ settings have no effect")
        return None


def configure_heap(settings) -> None:
    """The process's heap policy from its settings (``heap_keep_mb``, ``heap_large_blocks``)."""
    keep_freed_memory(settings.heap_keep_mb)
    if settings.heap_large_blocks == "heap":
        large_blocks_from_heap()


def large_blocks_from_heap() -> bool:
    """Serve every block, however large, from the one heap instead of a fresh mapping.

    glibc maps each block over 32 MB on its own and unmaps it when freed, and that ceiling cannot be
    raised: a network whose activations are larger (MAXIM on a large window) page-faults (and the kernel
    zeroes) every one of them again, on every layer, which made its windows slower per pixel the larger they
    were. From the heap, freed activations are reused by the next layer; the heap's free pages still go back
    to the kernel when the owner trims it (MAXIM's runner does between blocks and after each window).
    One arena, so that blocks freed by one request thread are reused by the next. False where the C library
    is not glibc."""
    mallopt = _mallopt()
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_MAX, 0))


def keep_freed_memory(megabytes: int) -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to ``megabytes`` of free heap for reuse. False
    (nothing changed) for 0 or where the C library is not glibc: its own policy then applies."""
    if megabytes <= 0:
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                                        and mallopt(M_TRIM_THRESHOLD, megabytes << 20))
