"""benchmarks/scale.py at a small size (issue #14 item 6): the script runs, its one step goes
into plasticity, its phases add up, and it leaves the PETSc options as it found them."""
from __future__ import annotations

import json

import pytest
from mpi4py import MPI

import ddrom  # noqa: F401  (PETSC_DIR before petsc4py)
from helpers import load_benchmark

@pytest.mark.mpi
def test_scale_hf_step_small(shared_tmp):
    from petsc4py import PETSc

    comm = MPI.COMM_WORLD
    scale = load_benchmark("scale")
    opts = PETSc.Options()
    before = {k: opts.getString(k) if opts.hasName(k) else None for k in scale.HYPRE}
    out = shared_tmp / "scale.json"
    row = scale.main(["--dofs", "3000", "--workdir", str(shared_tmp), "--json", str(out)])
    m = row["mesh_index_m"]
    assert row["dofs"] == scale.dofs_of(m) >= 3000
    assert row["ranks"] == comm.size and row["pc_type"] == "hypre"
    assert row["newton_iterations"] >= 2 and row["cutbacks"] == 0
    assert len(row["ksp_iterations"]) == row["newton_iterations"]
    assert 0 < row["answer"]["plastic_fraction"] < 0.5 and row["answer"]["p_max"] > 0
    pi = row["per_iteration_seconds"]
    parts = sum(pi[k] for k in ("constitutive", "matrix", "residual", "solve", "rest"))
    assert parts == pytest.approx(pi["total"], rel=1e-9)
    assert min(pi[k] for k in ("constitutive", "matrix", "residual", "solve")) > 0
    assert len(row["peak_rss_mb_per_rank"]) == comm.size == len(row["bytes_per_owned_dof"])
    assert sum(row["owned_dofs_per_rank"]) == row["dofs"]
    assert {k: opts.getString(k) if opts.hasName(k) else None for k in scale.HYPRE} == before
    if comm.rank == 0:
        assert json.loads(out.read_text())["row"]["newton_iterations"] == row["newton_iterations"]


@pytest.mark.mpi
@pytest.mark.slow
def test_scale_pipeline_delegates_to_rom_speedup(shared_tmp):
    comm = MPI.COMM_WORLD
    scale = load_benchmark("scale")
    row = scale.main(["--part", "pipeline", "--dofs", "3000", "--steps", "2", "--training", "S_max=100;S_max=140",
                      "--test", "S_max=120", "--repeat", "1", "--workdir", str(shared_tmp)])
    assert row["dofs"] == scale.dofs_of(scale.m_for_dofs(3000)) and row["ranks"] == comm.size
    assert row["steps"] == 2 and len(row["hf_training_runs"]) == 2
    assert row["speedup_median"] > 1 and row["rel_error_displacement"] < 1e-2
