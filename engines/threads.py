"""Thread set-up for the pool's executors: one compute team, single-threaded helpers.

torch's OpenMP thread counts are per calling thread: each thread that runs a parallel torch op
gets its own OpenMP team, sized by that thread's setting (first use copies the last value any
thread set). The pool's CPU threads run torch ops too (resizes in pre- and post-processing),
so with default settings every one of them grows a team as large as the machine. With more
OpenMP threads than cores, libgomp stops spinning (GOMP_SPINCOUNT is throttled for the whole
process), and every forward pays for waking its team: measured here, DINOv3 ViT-S/16 ran 126-150 ms
in the server's process against 92 ms in a plain one, even from the main thread.

So each executor thread fixes its own count when it starts: the compute thread(s) get the
configured intra-op threads, the CPU helpers one thread each (their parallelism is across
images, not inside one resize).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


def _set_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:  # a process without torch serves ONNX Runtime only
        return
    torch.set_num_threads(threads)
    # The first parallel op of a thread (re)reads the count: make it happen now, with ours.
    torch.ones(64).add_(1)
    torch.set_num_threads(threads)


def init_compute_thread(threads: int) -> None:
    """Initializer of a compute executor thread: torch intra-op threads = ``threads``."""
    _set_threads(max(1, threads))


def init_helper_thread() -> None:
    """Initializer of a CPU helper thread (pre/post-processing, loading): one torch thread.

    OpenCV (DA3's resizes, depth maps, masks) gets one thread too. Its count is process-wide,
    not per thread, and its pool, like torch's team, spins after a parallel call: 0.6 ms of CPU
    after each 512² resize, taken from the cores a forward is running on. The parallelism of
    the helpers is across images.
    """
    _set_threads(1)
    import cv2

    cv2.setNumThreads(1)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Set the calling thread's torch intra-op threads to ``threads`` for the duration.

    A no-op without torch. Setting the count costs well under a microsecond; the thread's
    OpenMP team stays.
    """
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
