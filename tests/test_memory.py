"""Freed heap memory returned to the OS between Newton iterations (ddrom.parallel.memory)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from ddrom.parallel.memory import release_free_heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_freed_blocks_inside_the_heap_go_back_to_the_os():
    """Blocks freed between blocks that stay alive are not returned by free() itself (glibc
    only trims the heap's top): 192 MB of such holes stay resident until the trim."""
    blocks = [np.ones(8192) for _ in range(4000)]        # 64 KB each: below the mmap threshold
    keep = blocks[3::4]                                  # every 4th stays alive: interior holes
    del blocks
    before = _rss_mb()
    if not release_free_heap():
        pytest.skip("C library without malloc_trim")
    after = _rss_mb()
    assert before - after >= 100.0, (before, after)
    assert all(float(b[0]) == 1.0 for b in keep)
