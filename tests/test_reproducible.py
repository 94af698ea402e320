"""The same ECM and Q-DEIM points, bitwise, at 1, 2, 3 and 5 ranks and from run to run.

Measured before (issue 16): four 2-rank ``ddrom offline`` runs of one store gave three
ECM point sets (PT-Scotch partitions changed from run to run) and every rank count
gave another set (8-12 of 94 points), because the POD bases differed by ~4e-11 between
partitions and the ECM greedy turns such differences into different picks near
convergence. Now the partition is deterministic (SCOTCH_PTHREAD_NUMBER=1) and the POD
with natural row ids is bitwise partition-independent (ddrom.reduction.exact), so the
whole chain -- POD of nodal and integration-point snapshots, an ECM on integrands built
from the modes, Q-DEIM -- gives identical bits at any rank count.

The data are functions of the natural coordinates on a mesh built on rank 0 and
distributed by PT-Scotch (tests/helpers.py), identical for every number of ranks. The
box and the field are mirror-symmetric about x = 1: mirror points have scores equal up
to round-off, deliberate near-ties that only the smallest-global-id rule resolves.

The in-process tests (mpi-marked, 1 and 3 ranks) check the POD against COMM_SELF with
shuffled and uneven row distributions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.reduction import Diagonal, Euclidean, pod
from ddrom.reduction.exact import exact_gram, exact_sketch, reproducible_sqnorms, row_matmul

COMM = MPI.COMM_WORLD
TESTS = Path(__file__).resolve().parent

PIPELINE = textwrap.dedent('''
    import hashlib, json, sys
    import numpy as np
    from mpi4py import MPI
    import ddrom
    from helpers import distributed
    from ddrom.mesh.generators import box, plate_with_hole
    from ddrom.reduction import Diagonal, Euclidean, pod
    from ddrom.reduction.ecm import ecm
    from ddrom.reduction.gappy import qdeim_points

    from ddrom.mesh.reference import CELL_TYPES

    c = MPI.COMM_WORLD
    dm = distributed(lambda: box(2.0, 1.0, 1.0, 8, 4, 4), c)
    # The snapshots are rational functions of the natural coordinates (+, -, *, / only,
    # correctly rounded by IEEE arithmetic): numpy's vectorized exp/sin/power are not
    # bitwise reproducible here -- in some processes numpy took its libm path instead of
    # the AVX-512 one for a strided operand (measured: 1 ulp on ~170 of 10240 values,
    # one rank in a few runs) -- which would make the DATA, not the algorithms under
    # test, vary from run to run.
    serial = box(2.0, 1.0, 1.0, 8, 4, 4)
    ref = CELL_TYPES[serial.cell_type]
    Xg = serial.points
    Qg = np.einsum("qk,ekd->eqd", ref.shape(ref.qp), serial.points[serial.cells]).reshape(-1, 3)
    a = np.linspace(0.5, 3.0, 20)
    Ug = np.stack([np.stack([Xg[:, 1] * Xg[:, 0] / (1.0 + s * Xg[:, 0] ** 2), (Xg[:, 1] + Xg[:, 2]) ** 3 * s,
                             0.1 * (Xg[:, 0] - 1.0) ** 2 * s], axis=1) for s in a], axis=2)
    Pg = np.stack([(1.0 + Qg[:, 1] * Qg[:, 2] * s) / (1.0 + s * (Qg[:, 0] - 1.0) ** 2) for s in a], axis=1)
    U = Ug[dm.node_natural[: dm.n_owned]].reshape(-1, len(a))        # rows 3 node + component
    ru = pod(U, c, Euclidean(), rtol=1e-10, row_ids=dm.natural_dof_ids())
    gid = dm.natural_qp_row_ids(1)
    P = Pg[gid]
    w = dm.weights.ravel()
    rp = pod(P, c, Diagonal(w), rtol=1e-9, row_ids=gid)
    Phi = rp.modes_loc
    iu = np.triu_indices(Phi.shape[1])
    A = (Phi[:, :, None] * Phi[:, None, :])[:, iu[0], iu[1]]       # integrands: products of modes
    e = ecm(A, w, gid, c, tol=1e-6)
    qd = np.asarray(qdeim_points(Phi, gid, c, n_extra=Phi.shape[1]))

    def natural(rows, ids):                 # TEST ONLY: the whole basis in natural order
        allr, alli = c.gather(rows, root=0), c.gather(ids, root=0)
        if c.rank:
            return None
        o = np.argsort(np.concatenate(alli))
        return np.vstack(allr)[o]

    H = lambda *xs: hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in xs)).hexdigest()[:16]
    Un, Pn = natural(ru.modes_loc, dm.natural_dof_ids()), natural(Phi, gid)
    # the PT-Scotch partition of a mesh (the demo's) at this rank count: the same in every run
    dp = distributed(lambda: plate_with_hole(40.0, 20.0, 2.0, 2.5, 48, 8, 2), c)
    parts = c.gather(dp.cell_natural, root=0)
    if c.rank == 0:
        print(json.dumps({"partition": H(*parts), "pod_u": H(ru.sigma_all, ru.vh, Un),
                          "pod_p": H(rp.sigma_all, rp.vh, Pn),
                          "n_modes": [ru.n_modes, rp.n_modes], "reproducible": [ru.info["reproducible"],
                          rp.info["reproducible"]],
                          "ecm_points": e.point_gids.tolist(), "ecm": H(e.point_gids, e.weights),
                          "ecm_converged": bool(e.converged), "qdeim": qd.tolist()}))
''')


def _mpirun(tmp: Path, np_: int) -> dict:
    script = tmp / "pipeline.py"
    script.write_text(PIPELINE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "OMPI_MCA_ess",
                                                                      "OMPI_MCA_orte", "OMPI_FILE"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    r = subprocess.run(["timeout", "300", "mpirun", "-n", str(np_), "--oversubscribe", sys.executable, str(script)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_points_identical_at_1_2_3_5_ranks_and_repeated(tmp_path):
    if COMM.size != 1:
        pytest.skip("starts its own mpirun")
    runs = {f"{n} ranks": _mpirun(tmp_path, n) for n in (1, 2, 3, 5)}
    runs["2 ranks again"] = _mpirun(tmp_path, 2)
    # the same partition in both 2-rank runs (before: 3 partitions of this mesh in 4 runs)
    assert runs["2 ranks again"]["partition"] == runs["2 ranks"]["partition"]
    ref = runs["1 ranks"]
    assert ref["ecm_converged"] and ref["reproducible"] == [True, True]
    assert len(ref["ecm_points"]) > 5 and len(ref["qdeim"]) > 5
    for label, res in runs.items():
        res = {k: v for k, v in res.items() if k != "partition"}      # partitions differ across rank counts
        want = {k: v for k, v in ref.items() if k != "partition"}
        assert res == want, (label, {k: (v, want[k]) for k, v in res.items() if v != want[k]})


# ------------------------------------------------------------------ in-process
def _distribution(n: int, comm, seed: int) -> np.ndarray:
    """Rows of this rank: a shuffled, uneven partition of range(n) (rank 0 gets the fewest)."""
    perm = np.random.default_rng(seed).permutation(n)
    shares = np.array([1, 3, 2, 5, 4, 6, 7, 8][: comm.size], dtype=float) if comm.size <= 8 else np.ones(comm.size)
    cuts = np.concatenate(([0], np.round(np.cumsum(shares) / shares.sum() * n))).astype(int)
    return perm[cuts[comm.rank]:cuts[comm.rank + 1]]


def _graded(n: int, m: int, seed: int = 3) -> np.ndarray:
    """Singular values over 13 decades, a repeated and a zero column (rank-deficient)."""
    rng = np.random.default_rng(seed)
    U0, _ = np.linalg.qr(rng.standard_normal((n, m)))
    V0, _ = np.linalg.qr(rng.standard_normal((m, m)))
    S = (U0 * np.logspace(0, -13, m)) @ V0.T
    S[:, 5] = 2.0 * S[:, 3]
    S[:, 7] = 0.0
    return S


@pytest.mark.mpi
@pytest.mark.parametrize("weighted", [False, True])
def test_pod_with_row_ids_is_bitwise_partition_independent(weighted):
    n, m = 900, 40
    S = _graded(n, m)
    w = np.random.default_rng(5).uniform(0.5, 2.0, n)
    ids = 7 * np.arange(n) + 3                          # any unique global ids

    def run(comm, rows):
        inner = Diagonal(w[rows]) if weighted else Euclidean()
        r = pod(S[rows], comm, inner, rtol=1e-12, row_ids=ids[rows])
        modes = np.zeros((n, r.n_modes))
        modes[rows] = r.modes_loc
        full = comm.allreduce(modes)                    # one non-zero term per entry: exact
        return r, full

    ref, ref_modes = run(MPI.COMM_SELF, np.arange(n))
    assert ref.info["reproducible"] and ref.n_modes > 30
    for seed in (0, 1):
        r, modes = run(COMM, _distribution(n, COMM, seed))
        assert np.array_equal(r.sigma_all, ref.sigma_all) and np.array_equal(r.vh, ref.vh)
        assert np.array_equal(modes, ref_modes)
        assert r.info["orth_err"] < 1e-13
    # the same singular values as LAPACK, to round-off
    sw = np.linalg.svd(S * np.sqrt(w)[:, None] if weighted else S, compute_uv=False)
    assert np.abs(ref.sigma_all[:ref.n_modes] - sw[:ref.n_modes]).max() <= 1e-14 * sw[0]


@pytest.mark.mpi
def test_pod_overwrite_scales_in_place_with_the_same_bits():
    """``overwrite=True`` (the offline stage's stress POD): the weighted snapshots are the
    caller's block scaled in place, and the POD is bitwise the one of a copy."""
    n, m = 900, 40
    S = _graded(n, m)
    w = np.random.default_rng(5).uniform(0.5, 2.0, n)
    ids = 7 * np.arange(n) + 3
    rows = _distribution(n, COMM, 1)
    ref = pod(S[rows], COMM, Diagonal(w[rows]), rtol=1e-12, row_ids=ids[rows])
    block = S[rows].copy()
    r = pod(block, COMM, Diagonal(w[rows]), rtol=1e-12, row_ids=ids[rows], overwrite=True)
    assert np.array_equal(r.sigma_all, ref.sigma_all) and np.array_equal(r.vh, ref.vh)
    assert np.array_equal(r.modes_loc, ref.modes_loc)
    np.testing.assert_array_equal(block, S[rows] * np.sqrt(w[rows])[:, None])   # scaled in place
    # without row_ids (a path that may go back to the snapshots) nothing is overwritten
    block = S[rows].copy()
    pod(block, COMM, Diagonal(w[rows]), rtol=1e-12, overwrite=True)
    np.testing.assert_array_equal(block, S[rows])


@pytest.mark.mpi
def test_exact_reductions_partition_independent():
    rng = np.random.default_rng(11)
    n = 700
    A = rng.standard_normal((n, 9)) * np.logspace(0, -12, 9)
    B = rng.standard_normal((n, 4))
    ids = np.arange(n) * 5
    rows = _distribution(n, COMM, 2)
    G, GB = exact_gram(A, MPI.COMM_SELF), exact_gram(A, MPI.COMM_SELF, B)
    assert np.array_equal(exact_gram(A[rows], COMM), G) and np.array_equal(G, G.T)
    assert np.array_equal(exact_gram(A[rows], COMM, B[rows]), GB)
    np.testing.assert_allclose(G, A.T @ A, rtol=0, atol=1e-15 * np.abs(A.T @ A).max())
    Y = exact_sketch(A, ids, 26, MPI.COMM_SELF)
    assert np.array_equal(exact_sketch(A[rows], ids[rows], 26, COMM), Y)
    assert np.array_equal(reproducible_sqnorms(A[rows], COMM), reproducible_sqnorms(A, MPI.COMM_SELF))
    Z = rng.standard_normal((9, 3))
    assert np.array_equal(row_matmul(A[3:4], Z), row_matmul(A[2:5], Z)[1:2])   # one row as in a block


def test_row_ids_need_rcholqr_and_one_id_per_row():
    from ddrom.parallel import DdromError

    S = _graded(200, 10)
    with pytest.raises(DdromError, match="row_ids .* need method 'rcholqr'"):
        pod(S, MPI.COMM_SELF, method="tsqr", row_ids=np.arange(200))
    with pytest.raises(DdromError, match="one integer id per local row"):
        pod(S, MPI.COMM_SELF, row_ids=np.arange(10))


@pytest.mark.mpi
def test_reproducible_fallback_when_rcholqr_checks_fail(monkeypatch):
    """When every rcholqr attempt fails its safety check, the fallback (method of snapshots
    with an exact Gram matrix) is partition-independent too."""
    import sys

    pod_mod = sys.modules["ddrom.reduction.pod"]
    monkeypatch.setattr(pod_mod, "RESID_RTOL", 0.0)       # every dropped column "fails"
    n = 600
    S = _graded(n, 24)
    ids = np.arange(n)

    def run(comm, rows):
        r = pod(S[rows], comm, rtol=1e-7, row_ids=ids[rows])
        modes = np.zeros((n, r.n_modes))
        modes[rows] = r.modes_loc
        return r, comm.allreduce(modes)

    ref, ref_modes = run(MPI.COMM_SELF, np.arange(n))
    assert ref.info["variant"] == "snapshots-exact" and ref.info["reproducible"]
    r, modes = run(COMM, _distribution(n, COMM, 7))
    assert np.array_equal(r.sigma_all, ref.sigma_all) and np.array_equal(modes, ref_modes)
    assert r.info["orth_err"] < 1e-13


# ------------------------------------------------------- the ROM file of `ddrom offline`
def _rom_content(path: Path) -> dict:
    """Digest of every dataset and attribute of a ROM file, but those that say how and when
    it was made (provenance: ranks, paths; the version; the root digest, which covers them)."""
    import hashlib

    import h5py

    skip = {"provenance", "ddrom_version"}
    out = {}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            if k not in skip and not (k == "ddrom_attrs_sha256"):
                out[f"/@{k}"] = repr(v)

        def visit(name, obj):
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = repr(v)
            if isinstance(obj, h5py.Dataset):
                out[name] = hashlib.sha256(np.ascontiguousarray(obj[()]).tobytes()).hexdigest()
        f.visititems(visit)
    return out


@pytest.mark.slow
def test_ddrom_offline_same_rom_file_at_1_2_3_5_ranks_and_repeated(tmp_path):
    """`ddrom offline` of one store: the same ECM and Gappy points -- in fact the same ROM file
    content, bases, operators and weights included -- at 1, 2, 3 and 5 ranks and on a
    repeated run (measured before: 1 of 40 points moved at 3 and 5 ranks, every array
    differed in its last bits)."""
    import shutil

    from helpers import PLATE_CASE, clean_mpi_env

    if COMM.size != 1:
        pytest.skip("starts its own mpirun")
    (tmp_path / "case.toml").write_text(PLATE_CASE)
    ddrom = str(Path(sys.executable).parent / "ddrom")

    def run(n: int, *args: str) -> None:
        r = subprocess.run(["timeout", "300", "mpirun", "-n", str(n), "--oversubscribe", ddrom, *args, "--quiet"],
                           cwd=tmp_path, env=clean_mpi_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]

    run(2, "hf", "case.toml")
    rom = tmp_path / "out" / "faults" / "rom.h5"
    roms = {}
    for label, n in (("1", 1), ("2", 2), ("3", 3), ("5", 5), ("2 again", 2)):
        run(n, "offline", "case.toml")
        roms[label] = tmp_path / f"rom_{label.replace(' ', '_')}.h5"
        shutil.copy(rom, roms[label])
    ref = _rom_content(roms["1"])
    assert len(ref) > 50
    import h5py

    with h5py.File(roms["1"], "r") as f:
        points = f["online/point_gids"][()]
        assert len(points) > 20 and np.count_nonzero(f["online/weights"][()]) > 10
    for label, path in roms.items():
        got = _rom_content(path)
        assert got == ref, (label, sorted(k for k in set(got) | set(ref) if got.get(k) != ref.get(k))[:20])
