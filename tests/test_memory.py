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


@pytest.mark.parametrize("user", [None, "1"])
def test_numpy_huge_pages_off_unless_the_user_sets_them(user):
    """``import ddrom`` turns numpy's huge-page advice off (fresh mesh-sized arrays of the
    enrichment's updates paid for memory compaction in their page faults), before or after
    numpy's own import; a user's ``NUMPY_MADVISE_HUGEPAGE`` wins."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if user is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = user
    for first in ("import numpy.core.multiarray as m; import ddrom", "import ddrom; import numpy.core.multiarray as m"):
        out = subprocess.run([sys.executable, "-c", f"{first}; print(m._set_madvise_hugepage(True))"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
        # the setter returns the value it replaces
        assert out == ("True" if user == "1" else "False"), (first, out)
