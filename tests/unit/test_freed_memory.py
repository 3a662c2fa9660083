"""glibc keeps freed large blocks for reuse (``engines/memory.py``), and gives them back on demand.

Each case runs in a fresh interpreter: the options are process-wide.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc options (other C libraries are left alone by design)",
)

PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import psutil
    from engines.memory import keep_freed_memory, release_freed_memory

    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    faults = []
    for _ in range(4):  # a forward's 100 MB intermediate, again and again
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(25_000_000, np.float32)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del block
    rss_kept = psutil.Process().memory_info().rss
    released = release_freed_memory()
    rss_released = psutil.Process().memory_info().rss
    print(json.dumps({"kept": kept, "faults": faults, "released": released,
                      "rss_freed_mb": (rss_kept - rss_released) / 2**20}))
    """
)


def probe(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_a_freed_block_is_reused_without_new_page_faults() -> None:
    default, kept = probe("default"), probe("keep")
    assert kept["kept"] is True
    # glibc's default: each 100 MB block is mapped anew and faulted in again (as many faults
    # each time; fewer than 4 KB pages where the kernel backs the map with huge pages)
    first, *again = default["faults"]  # type: ignore[misc]
    assert first > 100 and min(again) > 0.5 * first, default
    # kept: the first block faults its pages in once, the next ones reuse them
    first, *again = kept["faults"]  # type: ignore[misc]
    assert first > 100 and max(again) < 0.02 * first, kept


def test_release_gives_the_kept_memory_back() -> None:
    kept = probe("keep")
    assert kept["released"] is True
    assert kept["rss_freed_mb"] > 80, kept  # the kept 100 MB block goes back to the kernel
