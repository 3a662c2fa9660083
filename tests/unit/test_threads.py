"""Per-thread torch thread counts: the executors' initialisers and the temporary override."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from engines.threads import init_compute_thread, init_helper_thread, torch_threads


def _counts_inside_and_after(threads: int, fail: bool) -> tuple[int, int, int]:
    before = torch.get_num_threads()
    inside = -1
    try:
        with torch_threads(threads):
            inside = torch.get_num_threads()
            if fail:
                raise ValueError("a step failed")
    except ValueError:
        pass
    return before, inside, torch.get_num_threads()


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
def test_torch_threads_sets_this_threads_count_and_restores_it(fail: bool) -> None:
    with ThreadPoolExecutor(1, initializer=init_compute_thread, initargs=(2,)) as compute:
        assert compute.submit(_counts_inside_and_after, 1, fail).result() == (2, 1, 2)
        assert compute.submit(_counts_inside_and_after, 2, fail).result() == (2, 2, 2)
    with ThreadPoolExecutor(1, initializer=init_helper_thread) as helper:
        assert helper.submit(_counts_inside_and_after, 1, fail).result() == (1, 1, 1)


def test_a_helper_thread_leaves_opencv_one_thread() -> None:
    """OpenCV's count is process-wide: a helper sets it to one (its pool spins after a call)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with ThreadPoolExecutor(1, initializer=init_helper_thread) as helper:
            helper.submit(int).result()
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
