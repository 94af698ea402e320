"""Runtime settings ``import ddrom`` makes (ddrom._env)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("user", [None, "2"])
def test_one_blas_thread_per_rank_whatever_the_import_order(user):
    """``import ddrom`` gives numpy's BLAS one thread (the ranks are the parallelism), also
    when numpy was imported first (its BLAS then read the environment already: most
    scripts and benchmarks import numpy before ddrom); a user's thread count wins."""
    pytest.importorskip("threadpoolctl")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                              "MKL_NUM_THREADS")}
    if user is not None:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = user
    probe = ("from threadpoolctl import threadpool_info; "
             "print(max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))")
    for first in ("import numpy; import ddrom", "import ddrom; import numpy"):
        out = subprocess.run([sys.executable, "-c", f"{first}; {probe}"], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        expected = 1 if user is None else min(int(user), os.cpu_count() or 1)
        assert int(out) == expected, (first, out)
