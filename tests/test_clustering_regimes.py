"""Physics-informed clustering on HF data, end to end (issue 3, benchmarks/clustering_regimes.py).

A small version of cases/regimes_load_direction.toml: a lug clamped on its left face,
loaded through its hole by a traction of direction theta_i = i pi / 3 (6 simulations)
and amplitude 1.5 * 10**logA over two decades, linear elastic, 2 load steps.

What makes the assertion sharp: in linear elasticity u(theta) = cos(theta) u_x +
sin(theta) u_y, so every simulation spans exactly one direction and theta, theta + pi
span the same one. With k = 3 simulation clusters and N = 1 mode, the Grassmann k-medoids
pairs (0, 3), (1, 4), (2, 5) and projects every simulation exactly (error at the HF
solver's noise), while the Euclidean distance puts opposite loads farthest apart and
groups by amplitude instead, so its one-mode local bases must miss whole directions.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from helpers import load_benchmark

pytestmark = pytest.mark.slow

CASE = """
[case]
name = "small_direction"

[mesh]
generator = "plate_with_hole"
args = {{ width = 30.0, height = 30.0, thickness = 2.0, radius = 3.0, n_around = 16, n_radial = 3, n_thick = 1 }}
partitioner = "rcb"

[material]
law = "elastic"
E = 200e3
nu = 0.3

[parameters]
theta = {{ min = 0.0, max = 6.2832, default = 0.0 }}
logA = {{ min = 0.0, max = 2.0, default = 1.0 }}

[time]
times = [0.5, 1.0]

[loads]
dirichlet = [{{ region = "left" }}]
traction = [{{ region = "hole", vector = ["1.5 * 10**logA * cos(theta) * ramp(t, 1)",
                                         "1.5 * 10**logA * sin(theta) * ramp(t, 1)", 0.0] }}]

[solver]
newton_rtol = 1e-9

[training]
values = [{training}]
"""


@pytest.mark.mpi
def test_angle_local_bases_beat_euclidean_kmeans_on_load_direction(shared_tmp):
    comm = MPI.COMM_WORLD
    # theta_i = i pi/3; amplitudes scrambled over the directions: 2 ((5 i) mod 6) / 5
    pts = [(i * math.pi / 3, 2.0 * ((5 * i) % 6) / 5) for i in range(6)]
    path = shared_tmp / "small_direction.toml"
    if comm.rank == 0:
        training = ", ".join(f"{{ theta = {t:.6f}, logA = {a:.3f} }}" for t, a in pts)
        path.write_text(CASE.format(training=training))
    comm.Barrier()
    bench = load_benchmark("clustering_regimes")
    data = bench.load_gram(str(path), comm)
    C, sims = data["C"], data["sims"]
    assert C.shape == (12, 12) and len(data["names"]) == 6 and data["steps"] == [1, 2]
    assert data["n_rows"] == 3 * 16 * 4 * 2
    # the Gram matrix is the same on every rank (bitwise: agree() broadcast it)
    assert np.array_equal(C, comm.bcast(C, root=0))

    res = bench.compare(C, sims, ks=[3], Ns=[1, 2])
    row = next(r for r in res["rows"] if r["k"] == 3 and r["N"] == 1)
    grass, eucl = row["grassmann_max"], row["euclid_kmeans"]
    # Grassmann: the pairs {theta, theta + pi}, whatever the amplitudes
    assert res["labels"][3]["grassmann_max"] == [0, 1, 2, 0, 1, 2]
    # every span is 1-D here: the chordal distance (extra dimensions) agrees
    assert res["labels"][3]["grassmann_chordal"] == [0, 1, 2, 0, 1, 2]
    assert row["grassmann_chordal"]["max"] < 1e-5
    assert grass["max"] < 1e-5                       # exact up to the HF solver's noise
    # Euclidean k-means: some cluster mixes directions, a whole simulation is missed
    assert res["labels"][3]["euclid_kmeans"] != [0, 1, 2, 0, 1, 2]
    assert eucl["mean"] > 0.05 and eucl["max"] > 0.3
    assert bench.verdict(grass["mean"], eucl["mean"]) == "<"
    # the global basis needs the 2 directions u_x, u_y: one mode is far from enough, two
    # are exact (linear elasticity)
    assert row["global_mean"] > 0.1
    assert next(r for r in res["rows"] if r["N"] == 2)["global_max"] < 1e-5
    # snapshot level agrees (every column of a simulation is the same direction)
    assert row["snap_angle"]["max"] < 1e-5 and row["snap_euclid_kmeans"]["mean"] > 0.05


def test_angle_dissimilarity_is_exactly_symmetric_for_nearly_parallel_snapshots():
    """Regression: (C_ij inv_i) inv_j and (C_ji inv_j) inv_i round differently, and for
    nearly parallel columns sqrt(1 - cos^2) turned the last bit into a 1e-8 asymmetry,
    which PAM rejected ("dissimilarity matrix is not symmetric") on HF data whose load
    steps are multiples of one another."""
    from ddrom.reduction import clustering as cl

    rng = np.random.default_rng(3)
    u, v = rng.standard_normal((2, 500))
    S = np.column_stack([a * u + 1e-9 * rng.standard_normal(500) for a in (0.3, 1.0, 7.0, 19.0)]
                        + [b * v for b in (0.5, 2.0, 11.0)])
    C = cl.check_gram(S.T @ S)
    D = cl.angle(C)
    assert np.array_equal(D, D.T)
    c = cl.cluster(C, 2, dissimilarity="angle")
    assert c.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
