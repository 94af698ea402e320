"""Cost of one constitutive update per integration point, law by law, side by side.

For n = 1e4, 1e5, 1e6 points (serial, one process), times ``Material.update`` with and
without the consistent tangent, for

* ``elastic``        : isotropic linear elasticity (the floor: no local solve);
* ``j2_linear``      : J2 with linear isotropic + linear kinematic hardening (gamma = 0:
                       the return map is closed-form, one residual evaluation);
* ``chaboche_af``    : J2 with Armstrong-Frederick kinematic hardening (local Newton);
* ``viscous_af``     : Norton viscoplasticity + AF (two local solves per point);

with random strains large enough that (almost) every point is plastic. Prints a table of
ns per point (best of ``--repeat``), the ratio to elastic, and writes ``--json PATH``.

Usage::

    .venv/bin/python benchmarks/materials_update.py [--sizes 1e4 1e5 1e6] [--repeat 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from ddrom.materials import from_config

BASE = {"E": 200e3, "nu": 0.3}
CASES = {
    "elastic": {"law": "elastic", **BASE},
    "j2_linear": {"law": "j2", **BASE, "sigma_y": 200.0, "H": 1000.0, "C": 20000.0},
    "chaboche_af": {"law": "chaboche", **BASE, "sigma_y": 200.0, "H": 1000.0, "C": 40000.0, "gamma": 150.0},
    "viscous_af": {"law": "chaboche", **BASE, "sigma_y": 150.0, "H": 1000.0, "C": 40000.0, "gamma": 150.0,
                   "K": 80.0, "N": 6.0},
}


def best_time(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(sizes: list[int], repeat: int) -> list[dict]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(0)
        eps0 = rng.normal(size=(n, 6)) * 2e-3
        eps = eps0 + rng.normal(size=(n, 6)) * 2e-3
        T = np.full(n, 20.0)
        t_el = None
        for name, cfg in CASES.items():
            mat = from_config(cfg)
            # a first step gives a non-trivial state (eps_p, X, p), as inside a time march
            state = mat.update(eps0, mat.initial_state(n), T, T, 0.1, tangent=False).state
            r = mat.update(eps, state, T, T, 0.1)
            plastic = float(np.mean(mat.cumulated_plastic_strain(r.state) > mat.cumulated_plastic_strain(state)))
            t_tan = best_time(lambda: mat.update(eps, state, T, T, 0.1, tangent=True), repeat)
            t_no = best_time(lambda: mat.update(eps, state, T, T, 0.1, tangent=False), repeat)
            if name == "elastic":
                t_el = t_tan
            rows.append({"n": n, "law": name, "plastic_fraction": plastic,
                         "ns_per_point_tangent": 1e9 * t_tan / n, "ns_per_point_no_tangent": 1e9 * t_no / n,
                         "ratio_to_elastic": t_tan / t_el})
            del r, state
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    rows = run([int(s) for s in args.sizes], args.repeat)
    print(f"{'n':>9} {'law':<12} {'plastic':>7} {'ns/pt (tangent)':>16} {'ns/pt (no tan.)':>16} {'x elastic':>9}")
    for r in rows:
        print(f"{r['n']:>9d} {r['law']:<12} {r['plastic_fraction']:>7.2f} {r['ns_per_point_tangent']:>16.1f}"
              f" {r['ns_per_point_no_tangent']:>16.1f} {r['ratio_to_elastic']:>9.1f}")
    if args.json:
        meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
                "repeat": args.repeat, "processes": 1}
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(args.json, {"benchmark": "materials_update", "meta": meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
