"""Freed memory kept for the next forward instead of being handed back to the kernel each time.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and gives it back with ``munmap`` when freed. A forward's large activations (a
GroundingDINO encoder layer's 80 MB intermediates, Depth Anything's head at full resolution,
SAM3's 1008² maps) are such blocks: every forward maps them anew and the kernel zero-fills each
page on first touch. Measured through the pool on the 2-core development machine
(``benchmarks/bench_freed_memory.py``, full-size checkpoints, one request at a time):
GroundingDINO-tiny spent 14.8 s of system time over 4 requests, 0.9 s with the options below,
8.9 → 7.3 s a request; DA-V2-small 0.81 → 0.68 s a request; DINOv3 ViT-S (small blocks, which
glibc already reuses) unchanged within noise.

So a serving process sets three of glibc's options when its pool is created: one arena for all
threads (``M_ARENA_MAX`` 1: a thread's arena lives in mapped 64 MB heaps, which glibc unmaps
whenever one falls empty, so the forwards on the pool's compute thread kept mapping anew), no
``mmap`` for blocks (``M_MMAP_MAX`` 0: every block comes from the heap, which reuses freed
space) and a trim threshold high enough that freeing the end of the heap does not hand it back
after each forward. The heap then keeps what the largest forward needed, as a caching allocator
would; unloading a model gives its memory back explicitly (:func:`release_freed_memory`,
``malloc_trim``). Threads that allocated before keep their arenas. Other C libraries (musl) and
allocators preloaded in glibc's place (jemalloc, tcmalloc, which cache by themselves) are left
alone; ``VISION_API_KEEP_FREED_MEMORY=false`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Free space at the end of the heap kept rather than trimmed: more than any forward here frees.
TRIM_THRESHOLD_BYTES = 2**31 - 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """One arena, large blocks from glibc's heap, freed ones kept for reuse (process-wide).

    Returns:
        Whether the options were set (False off glibc, or if glibc refused them).
    """
    libc = _glibc()
    if libc is None:
        return False
    done = (
        bool(libc.mallopt(M_ARENA_MAX, 1))
        and bool(libc.mallopt(M_MMAP_MAX, 0))
        and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    )
    log.debug("glibc malloc keeps freed memory: %s", done)
    return done


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel (``malloc_trim``), e.g. after an unload.

    Returns:
        Whether any memory was given back (False off glibc).
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
