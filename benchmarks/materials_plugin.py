"""Cost per integration point of a compiled UMAT plugin against the vectorized built-in law.

For n = 1e4, 1e5, 1e6 points (serial, one process) and the same random strain step that
makes (almost) every point plastic, times side by side

* ``builtin``   : ``Material.update`` of the built-in ``j2`` (numpy, closed-form return map
                  for linear isotropic hardening) or ``elastic``;
* ``plugin_c``  : ``Material.update`` of law ``"umat"`` with the C example UMAT (adapter:
                  Mandel <-> Abaqus Voigt conversions, state packing, ONE batch call);
* ``plugin_f``  : the same with the Fortran example UMAT;
* ``*_batch``   : the foreign call ``ddrom_umat_batch`` alone on prepared arrays (the
                  compiled per-point loop, without the numpy adapter).

All with the consistent tangent. Prints ns per point (best of ``--repeat``) and the ratio
to the built-in law, and writes ``--json PATH``. The plugins are built with cmake into
``--build-dir`` (default: a temporary folder).

Usage::

    .venv/bin/python benchmarks/materials_plugin.py [--sizes 1e4 1e5 1e6] [--repeat 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import ctypes
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ddrom.materials import from_config
from ddrom.materials.plugin import build_plugins, mandel_to_voigt_strain, mandel_to_voigt_stress

E, NU, SY, H = 200e3, 0.3, 200.0, 1000.0
LAWS = {
    "j2": ({"law": "j2", "E": E, "nu": NU, "sigma_y": SY, "H": H},
           {"props": [E, NU, SY, H], "nstatv": 7, "p_index": 6, "symmetric": True}),
    "elastic": ({"law": "elastic", "E": E, "nu": NU}, {"props": [E, NU]}),
}


def best_time(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def batch_call(mat, eps, state, T):
    """A closure making only the foreign call, on arrays prepared as the adapter does."""
    n = eps.shape[0]
    stran = mandel_to_voigt_strain(state[:, :6])
    dstran = mandel_to_voigt_strain(eps - state[:, :6])
    stress0 = mandel_to_voigt_stress(state[:, 6:12])
    statev0 = np.ascontiguousarray(state[:, 12:])
    stress, statev = stress0.copy(), statev0.copy()
    ddsdde = np.zeros((n, 6, 6))
    temp, dtemp = np.ascontiguousarray(T), np.zeros(n)
    time = np.zeros(2)
    info, pnewdt = ctypes.c_int(0), ctypes.c_double(1.0)
    props = mat.props
    lib = mat.load()._lib

    def call():
        # in/out arrays restored outside the timed call would need a second copy; the
        # copies (2 x 13 doubles per point) are part of what an update must do anyway
        stress[...] = stress0
        statev[...] = statev0
        lib.ddrom_umat_batch(n, stran.ctypes.data, dstran.ctypes.data, stress.ctypes.data, statev.ctypes.data,
                             mat.nstatv, ddsdde.ctypes.data, props.ctypes.data, props.size, temp.ctypes.data,
                             dtemp.ctypes.data, None, None, 0, time.ctypes.data, 0.1, None, None, None, None, 1, 1,
                             b"DDROM", ctypes.byref(pnewdt), ctypes.byref(info))
    return call


def run(sizes: list[int], repeat: int, build: Path) -> list[dict]:
    rows = []
    langs = [lg for lg in ("c", "f") if (build / f"libddrom_umat_j2_{lg}.so").is_file()]
    for n in sizes:
        rng = np.random.default_rng(0)
        eps0 = rng.normal(size=(n, 6)) * 2e-3
        eps = eps0 + rng.normal(size=(n, 6)) * 2e-3
        T = np.full(n, 20.0)
        for law, (builtin_cfg, umat_extra) in LAWS.items():
            ref = from_config(builtin_cfg)
            st = ref.update(eps0, ref.initial_state(n), T, T, 0.1, tangent=False).state
            r = ref.update(eps, st, T, T, 0.1)
            plastic = float(np.mean(ref.cumulated_plastic_strain(r.state) > ref.cumulated_plastic_strain(st)))
            t_ref = best_time(lambda: ref.update(eps, st, T, T, 0.1), repeat)
            rows.append({"n": n, "law": law, "method": "builtin", "plastic_fraction": plastic,
                         "ns_per_point": 1e9 * t_ref / n, "ratio_to_builtin": 1.0})
            del r
            for lg in langs:
                mat = from_config({"law": "umat", "library": str(build / f"libddrom_umat_{law}_{lg}.so"),
                                   **umat_extra})
                sp = mat.update(eps0, mat.initial_state(n), T, T, 0.1, tangent=False).state
                rp = mat.update(eps, sp, T, T, 0.1)
                # the comparison is only meaningful if both compute the same thing
                err = np.abs(rp.stress - ref.update(eps, st, T, T, 0.1, tangent=False).stress).max()
                assert err <= 1e-9 * np.abs(rp.stress).max(), err
                del rp
                t_up = best_time(lambda: mat.update(eps, sp, T, T, 0.1), repeat)
                t_b = best_time(batch_call(mat, eps, sp, T), repeat)
                rows.append({"n": n, "law": law, "method": f"plugin_{lg}", "plastic_fraction": plastic,
                             "ns_per_point": 1e9 * t_up / n, "ratio_to_builtin": t_up / t_ref})
                rows.append({"n": n, "law": law, "method": f"plugin_{lg}_batch", "plastic_fraction": plastic,
                             "ns_per_point": 1e9 * t_b / n, "ratio_to_builtin": t_b / t_ref})
                del sp
            del st
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--build-dir", help="where to build the plugins (default: a temporary folder, removed)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    tmp = None if args.build_dir else tempfile.mkdtemp(prefix="ddrom-plugins-")
    build = build_plugins(Path(args.build_dir or tmp))
    try:
        rows = run([int(s) for s in args.sizes], args.repeat, build)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'n':>9} {'law':<8} {'method':<16} {'plastic':>7} {'ns/pt':>9} {'x builtin':>9}")
    for r in rows:
        print(f"{r['n']:>9d} {r['law']:<8} {r['method']:<16} {r['plastic_fraction']:>7.2f}"
              f" {r['ns_per_point']:>9.1f} {r['ratio_to_builtin']:>9.2f}")
    if args.json:
        meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
                "repeat": args.repeat, "processes": 1, "tangent": True,
                "compile": "cmake -DCMAKE_BUILD_TYPE=Release (gcc/gfortran -O3)"}
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(args.json, {"benchmark": "materials_plugin", "meta": meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
