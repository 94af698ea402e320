"""Hyper-reduced ROM end to end (HF sweep -> offline -> online), at 1 and 3 ranks."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import DdromError
from helpers import ELASTIC_LAW, PLASTIC_LAW, write_bar_case

pytestmark = pytest.mark.slow

@pytest.mark.mpi
def test_linear_elastic_rom_is_exact_in_the_span(shared_tmp):
    """Linear case: every snapshot is a combination of the load's two time patterns, so a
    new amplitude is in the span: the ROM reproduces HF to solver tolerance."""
    from ddrom.workflow.rom import run

    comm = MPI.COMM_WORLD
    s = run(write_bar_case(shared_tmp, comm, "elastic", ELASTIC_LAW), comm)
    assert s["n_modes"] <= 3                      # traction x, traction z, thermal: 3 patterns
    assert s["rel_error_displacement"] < 1e-8
    assert s["rel_error_stress"] < 1e-7
    assert s["n_reduced_points"] <= s["n_modes"] * 3 + 1


@pytest.mark.mpi
def test_plastic_rom_training_and_test_parameters(shared_tmp):
    from ddrom.workflow.rom import run, run_rom
    from ddrom.rom.model import load_model

    comm = MPI.COMM_WORLD
    path = write_bar_case(shared_tmp, comm, "plastic", PLASTIC_LAW, sx=90.0, sz=3.0, pod_tol=1e-7, ecm_tol=1e-8,
                          training=(0.5, 1.0, 1.5, 2.0), test=(2.0, 1.3))
    s = run(path, comm)
    on_training, off_training = s["per_test_parameter"]
    # A training parameter: errors at the level of the POD/ECM tolerances
    assert on_training["displacement"] < 1e-5, on_training
    assert on_training["stress"] < 1e-3, on_training
    assert on_training["plastic_strain"] < 1e-3, on_training
    # Between training points the plastic zone changes shape: the displacement stays accurate
    assert off_training["displacement"] < 1e-2, off_training
    m = load_model(Path(path).parent / "out" / "plastic" / "rom.h5", comm)
    assert m.gappy is not None and np.all(m.weights >= 0)
    # the sum of the reduced weights is the volume (constant function integrated)
    assert abs(m.weights.sum() - 4.0) < 1e-6 * 4.0
    # the online result of a training parameter sits on the training manifold: small indicator
    res = run_rom(path, comm, [{"A": 2.0}]).runs[0].result
    assert np.all(np.isfinite(res.q)) and np.nanmax(res.indicator) < 1e-3
    # the ECM columns were weighted by the stress snapshots: Gram diag(sigma_s^2), one per mode
    G = m.stress_gram
    assert G.shape == (m.stress_at_samples.shape[-1],) * 2
    assert np.array_equal(G, np.diag(np.diag(G))) and np.all(np.diag(G) > 0)
    assert np.all(np.diff(np.diag(G)) <= 0)
    # a schema-2 file (no stress_gram: unweighted columns) is still read
    old = Path(path).parent / "out" / "plastic" / "rom_schema2.h5"
    if comm.rank == 0:
        import shutil

        shutil.copy(Path(path).parent / "out" / "plastic" / "rom.h5", old)
        with h5py.File(old, "a") as f:
            f.attrs["schema_version"] = 2
            del f["online/stress_gram"]
            # as written before checksums: no digests (nothing to verify, read as it is)
            f.visit(lambda name: None if f[name].attrs.pop("ddrom_attrs_sha256", None) else None)
            for key in ("ddrom_attrs_sha256", "checksums"):
                f.attrs.pop(key, None)
    comm.Barrier()
    m2 = load_model(old, comm)
    assert m2.stress_gram is None and np.array_equal(m2.weights, m.weights)


def test_stress_column_weights_carry_the_snapshot_error_norm():
    """For any integration error E (N x Ns) of the mode columns, the error on the snapshot
    columns, ||E C||_F with C the snapshots' stress coefficients, equals ||E L||_F times
    sqrt(lambda_max(C C^T)): the weighted N x Ns columns stand for all the snapshots."""
    from ddrom.rom.offline import stress_column_weights

    rng = np.random.default_rng(3)
    Ns, m = 6, 40
    C = rng.standard_normal((Ns, m)) * np.logspace(0, -5, Ns)[:, None]
    G = C @ C.T
    L = stress_column_weights(G, Ns)
    lam = np.linalg.eigvalsh(G).max()
    for _ in range(5):
        E = rng.standard_normal((4, Ns))
        assert np.linalg.norm(E @ C) == pytest.approx(np.sqrt(lam) * np.linalg.norm(E @ L), rel=1e-12)
    np.testing.assert_array_equal(stress_column_weights(None, 3), np.eye(3))
    # offline, G = diag(sigma^2): the columns are the modes scaled by sigma / sigma_1
    sig = np.array([4.0, 2.0, 1e-3])
    np.testing.assert_allclose(np.abs(stress_column_weights(np.diag(sig ** 2), 3)).max(axis=0)[::-1],
                               sig / sig[0], rtol=1e-14)


@pytest.mark.mpi
def test_rom_file_and_online_results_partition_invariant(shared_tmp):
    """The ROM built on all ranks equals the one built on rank 0 alone (COMM_SELF)."""
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import build_rom, run_rom

    world = MPI.COMM_WORLD
    par = write_bar_case(shared_tmp, world, "par", PLASTIC_LAW, pod_tol=1e-6, ecm_tol=1e-8)
    ser = write_bar_case(shared_tmp, world, "ser", PLASTIC_LAW, pod_tol=1e-6, ecm_tol=1e-8)
    hf_sweep(par, world)
    build_rom(par, world)
    res_par = run_rom(par, world).runs[0].result
    # PETSc objects on the world communicator must be destroyed collectively, before
    # rank 0 works alone (their destruction would otherwise wait for the other ranks).
    import gc

    gc.collect()
    if world.rank == 0:
        hf_sweep(ser, MPI.COMM_SELF)
        build_rom(ser, MPI.COMM_SELF)
        res_ser = run_rom(ser, MPI.COMM_SELF).runs[0].result
        with h5py.File(shared_tmp / "out" / "par" / "rom.h5", "r") as fp, \
                h5py.File(shared_tmp / "out" / "ser" / "rom.h5", "r") as fs:
            np.testing.assert_array_equal(fp["online/point_gids"][...], fs["online/point_gids"][...])
            # the HF snapshots agree to the solver tolerance (1e-11), the weights to the
            # NNLS conditioning times that
            np.testing.assert_allclose(fp["online/weights"][...], fs["online/weights"][...], rtol=1e-6)
            # modes are defined up to sign: compare |E|
            np.testing.assert_allclose(np.abs(fp["online/E"][...]), np.abs(fs["online/E"][...]),
                                       rtol=1e-6, atol=1e-9 * np.abs(fs["online/E"][...]).max())
        np.testing.assert_allclose(res_par.p_samples, res_ser.p_samples, rtol=1e-6, atol=1e-12)
    world.Barrier()


@pytest.mark.mpi
def test_bad_rom_files(shared_tmp):
    from ddrom.rom.model import load_model

    comm = MPI.COMM_WORLD
    bad = shared_tmp / "garbage.h5"
    if comm.rank == 0:
        bad.write_bytes(b"not an hdf5 file at all" * 10)
    comm.Barrier()
    with pytest.raises(DdromError, match="unreadable or truncated"):
        load_model(bad, comm)
    with pytest.raises(DdromError, match="does not exist"):
        load_model(shared_tmp / "nope.h5", comm)


@pytest.mark.mpi
def test_rom_bases_of_another_mesh_are_refused(shared_tmp):
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import build_rom
    from ddrom.mesh.generators import box
    from ddrom.rom.model import load_bases
    from helpers import distributed

    comm = MPI.COMM_WORLD
    path = write_bar_case(shared_tmp, comm, "basesmesh", ELASTIC_LAW)
    hf_sweep(path, comm)
    build_rom(path, comm)
    other = distributed(lambda: box(4.0, 1.0, 1.0, 9, 2, 2))
    with pytest.raises(DdromError, match=r"basis .displacement. has 81 rows, the mesh has 90 nodes \(ROM built on another mesh\?\)"):
        load_bases(shared_tmp / "out" / "basesmesh" / "rom.h5", other, ["displacement"])


@pytest.mark.mpi
def test_local_bases_picked_by_the_classifier(shared_tmp):
    """Two regimes (load along +x then along -z dominated): two local ROMs, the classifier picks
    by nearest medoid in parameter space, and the local ROM is exact on its own training point."""
    from ddrom.workflow.rom import run
    from ddrom.rom.model import load_classifier

    comm = MPI.COMM_WORLD
    path = write_bar_case(shared_tmp, comm, "local", ELASTIC_LAW, pod_tol=1e-10, ecm_tol=1e-10,
                          training=(0.5, 0.6, 1.9, 2.0), test=(0.55, 2.0), extra_rom="n_clusters = 2")
    s = run(path, comm)
    clf = load_classifier(Path(path).parent / "out" / "local" / "rom.h5", comm)
    assert clf is not None and len(set(clf["labels"])) == 2
    low, high = s["per_test_parameter"]
    # each test point takes the cluster of the medoid nearest in parameter space
    A = np.array([p["A"] for p in clf["params"]])
    medoid_A = A[clf["medoids"]]
    labels = np.asarray(clf["labels"])
    for res, a in ((low, 0.55), (high, 2.0)):
        nearest = clf["medoids"][int(np.argmin(np.abs(medoid_A - a)))]
        assert res["cluster"] == labels[nearest]
    # linear case: every local basis spans the load patterns, the ROM is exact
    assert low["displacement"] < 1e-8 and high["displacement"] < 1e-8


@pytest.mark.mpi
def test_streaming_pod_offline_matches_batch(shared_tmp):
    """pod_method = "streaming" (one time step at a time from the store) gives the same ROM
    accuracy as the batch POD on the plastic case."""
    from ddrom.workflow.rom import run

    comm = MPI.COMM_WORLD
    errs = {}
    for method in ("tsqr", "streaming"):
        path = write_bar_case(shared_tmp, comm, f"pod_{method}", PLASTIC_LAW, sx=90.0, sz=3.0, pod_tol=1e-7,
                              ecm_tol=1e-8, training=(0.5, 1.0, 1.5, 2.0), test=(2.0,),
                              extra_rom=f'pod_method = "{method}"')
        s = run(path, comm)
        errs[method] = (s["n_modes"], s["rel_error_displacement"])
    assert abs(errs["streaming"][0] - errs["tsqr"][0]) <= 1
    assert errs["streaming"][1] < 1e-5 and errs["tsqr"][1] < 1e-5
