"""No hang, ever: an exception of any kind on one rank reaches every rank.

In-process (mpi-marked, 1 and 3 ranks): every kind of exception raised on one rank
inside :func:`ddrom.parallel.collective` becomes the same CollectiveError on every rank.

Subprocesses (``mpirun -n 2`` and ``-n 3``, each under ``timeout``): the ``ddrom``
entry point with a command that raises on one rank only, inside a collective block
(every rank exits with the collective status, checked per rank) and outside one (the
job is aborted, no rank is left waiting). Before the fix a ``SystemExit`` on one rank
(meshio calls ``sys.exit(1)`` on files it cannot read) left the other ranks spinning in
``raise_collective`` forever.

Through the real stages (slow; ``mpirun -n 2``/``-n 3``): one rank raises ``SystemExit``,
``KeyboardInterrupt`` or another ``BaseException`` inside the mesh generation, the HF
constitutive update, the offline build and the online solver of a ``ddrom`` command.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mpi4py import MPI

from ddrom.parallel import CollectiveError, collective, describe_exception, raise_collective

COMM = MPI.COMM_WORLD


class CustomBase(BaseException):
    """A BaseException subclass that is not an Exception (as some libraries define)."""


KINDS = {
    "exception": (lambda: ValueError("bad value 42"), "ValueError: bad value 42", 2),
    "systemexit": (lambda: SystemExit(1), "SystemExit: a library called sys.exit(1)", 2),
    "keyboard": (lambda: KeyboardInterrupt(), "KeyboardInterrupt: interrupted", 130),
    "base": (lambda: CustomBase("custom trouble"), "CustomBase: custom trouble", 2),
}


@pytest.mark.mpi
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_any_exception_on_one_rank_is_collective(kind):
    make, text, code = KINDS[kind]
    bad = COMM.size - 1          # the last rank: rank 0 is not the one that knows
    with pytest.raises(CollectiveError) as info:
        with collective(COMM, "stage X"):
            if COMM.rank == bad:
                raise make()
    assert str(info.value) == f"stage X: {text}"
    assert info.value.exit_code == code
    # the communicator is still usable: nobody is stuck in a half-finished collective
    assert COMM.allreduce(1) == COMM.size


@pytest.mark.mpi
def test_lowest_failing_rank_wins_with_its_exit_code():
    msg = f"rank {COMM.rank} failed" if COMM.rank >= COMM.size // 2 else None
    with pytest.raises(CollectiveError) as info:
        raise_collective(COMM, msg, exit_code=7 if COMM.rank == COMM.size // 2 else 9)
    assert str(info.value) == f"rank {COMM.size // 2} failed" and info.value.exit_code == 7


def test_describe_exception():
    assert describe_exception(SystemExit("no reader")) == "SystemExit: a library called sys.exit(1) (no reader)"
    assert describe_exception(SystemExit(None), "read") == "read: SystemExit: a library called sys.exit(0)"
    assert describe_exception(RuntimeError()) == "RuntimeError"
    from ddrom.parallel import DdromError

    assert describe_exception(DdromError("file x: bad"), "ignored prefix") == "file x: bad"


# ------------------------------------------------------------------ subprocesses
SCRIPT = textwrap.dedent('''
    """Run the ddrom entry point with a test command that raises on one rank."""
    import sys, time
    import ddrom
    from ddrom.cli import commands, main
    from ddrom.parallel import collective

    class CustomBase(BaseException):
        pass

    def raise_it(kind):
        if kind == "exception":
            raise ValueError("bad value 42")
        if kind == "systemexit":
            sys.exit(1)          # what meshio does on a file it cannot read
        if kind == "keyboard":
            raise KeyboardInterrupt()
        raise CustomBase("custom trouble")

    def add(p):
        p.add_argument("kind")
        p.add_argument("where", choices=["inside", "outside"])

    def run(args, comm):
        bad = comm.size - 1
        if args.where == "inside":
            with collective(comm, "stage X"):
                if comm.rank == bad:
                    raise_it(args.kind)
        elif comm.rank == bad:
            raise_it(args.kind)
        comm.Barrier()       # the other ranks wait here for a rank that will never come
        return 0

    commands.COMMANDS["boom"] = ("raise on one rank", add, run)
    code = main.main(["boom"] + sys.argv[2:])
    # Record the status before exiting: once one rank has exited non-zero, mpirun kills the
    # others, possibly before a wrapper around them could record theirs.
    from mpi4py import MPI
    with open(f"{sys.argv[1]}/rc.{MPI.COMM_WORLD.rank}", "w") as f:
        f.write(str(code))
    sys.exit(code)
''')


def _mpirun(tmp: Path, np_: int, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    script = tmp / "boom.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "OMPI_MCA_ess",
                                                                      "OMPI_MCA_orte", "OMPI_FILE"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # each rank records the status it exits with (mpirun reports only one)
    cmd = ["timeout", "-s", "KILL", str(timeout), "mpirun", "-n", str(np_), "--oversubscribe",
           sys.executable, str(script), str(tmp), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return r, time.perf_counter() - t0


def _codes(tmp: Path, np_: int) -> list[int | None]:
    out = []
    for r in range(np_):
        f = tmp / f"rc.{r}"
        out.append(int(f.read_text()) if f.exists() else None)
    return out


@pytest.mark.parametrize("np_, kind, code", [(2, "systemexit", 2), (3, "keyboard", 130), (2, "base", 2),
                                             (3, "exception", 2)])
def test_cli_inside_collective_every_rank_exits(tmp_path, np_, kind, code):
    """Raised by the last rank inside a collective block: every rank exits with the same status,
    rank 0 prints the one message."""
    r, seconds = _mpirun(tmp_path, np_, kind, "inside")
    assert r.returncode != 0 and r.returncode != -9, (r.returncode, r.stderr)   # -9: timeout killed it
    assert _codes(tmp_path, np_) == [code] * np_, r.stderr
    text = KINDS[kind][1]
    assert r.stderr.count(f"ddrom boom: error: stage X: {text}") == 1, r.stderr
    assert seconds < 60


@pytest.mark.parametrize("np_, kind", [(2, "systemexit"), (3, "base")])
def test_cli_outside_collective_aborts_the_job(tmp_path, np_, kind):
    """Raised by one rank outside any collective block while the others wait in a barrier:
    the job is aborted (non-zero), in bounded time, with the rank's message."""
    r, seconds = _mpirun(tmp_path, np_, kind, "outside")
    assert r.returncode not in (0, -9), (r.returncode, r.stderr)
    assert all(c is None or c != 0 for c in _codes(tmp_path, np_)), _codes(tmp_path, np_)
    want = "SystemExit: a library called sys.exit(1)" if kind == "systemexit" else "CustomBase: custom trouble"
    assert want in r.stderr and f"rank {np_ - 1}" in r.stderr, r.stderr
    assert seconds < 60


# ------------------------------------------------------------- inside the HF solver
@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["exception", "systemexit"])
def test_material_failure_on_one_rank_stops_every_rank(kind):
    """A constitutive update (e.g. a UMAT plugin) that raises on one rank only, inside the
    Newton loop whose next step is a collective reduction: every rank gets the same error."""
    from ddrom.hf.loads import Dirichlet, Loads
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.materials import from_config
    from ddrom.mesh.generators import box
    from helpers import distributed

    dm = distributed(lambda: box(1.0, 1.0, 1.0, 3, 3, 3))
    loads = Loads(dirichlet=[Dirichlet("xmin", (0, 1, 2), 0.0),
                             Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 1e-3 * t)])
    s = HFSolver(dm, from_config({"law": "elastic", "E": 200e3, "nu": 0.3}), loads, SolverOptions())
    real = s.material.update

    def update(*args, **kw):
        if COMM.rank == COMM.size - 1:
            raise KINDS[kind][0]()
        return real(*args, **kw)

    st0 = s.initial_state()
    s.material.update = update
    with pytest.raises(CollectiveError) as info:          # inside Newton
        s.step(st0, 1.0)
    assert str(info.value) == f"constitutive update: {KINDS[kind][1]}"
    with pytest.raises(CollectiveError) as info:          # in the initial state
        s.initial_state()
    assert str(info.value) == f"material update of the initial state (t = 0): {KINDS[kind][1]}"
    assert COMM.allreduce(1) == COMM.size
# ------------------------------------------------------ inside the stages, through the command
STAGE_CASE = """
[case]
name = "stages"

[mesh]
generator = "box"
args = { lx = 1.0, ly = 1.0, lz = 1.0, nx = 3, ny = 3, nz = 3 }

[material]
law = "elastic"
E = 200e3
nu = 0.3

[parameters]
u_max = { min = 0.001, max = 0.01, default = 0.005 }

[time]
t_end = 1.0
n_steps = 3

[loads]
dirichlet = [
  { region = "xmin", components = ["x", "y", "z"] },
  { region = "xmax", components = ["x"], value = "u_max * ramp(t, 1)" },
]

[training]
values = [{ u_max = 0.002 }, { u_max = 0.008 }]

[test]
values = [{ u_max = 0.005 }]
"""

STAGE_SCRIPT = textwrap.dedent('''
    """`ddrom STAGE case.toml` with one function of that stage raising KIND on one rank."""
    import importlib, sys
    from mpi4py import MPI
    from ddrom.cli import main

    folder, command, module, name, rank, kind = sys.argv[1:7]
    world = MPI.COMM_WORLD
    rank = world.size - 1 if rank == "last" else int(rank)

    class CustomBase(BaseException):
        pass

    def boom():
        if kind == "exception":
            raise ValueError("bad value 42")
        if kind == "systemexit":
            sys.exit(1)
        if kind == "keyboard":
            raise KeyboardInterrupt()
        raise CustomBase("custom trouble")

    owner, _, attr = name.rpartition(".")
    target = importlib.import_module(module)
    if owner:
        target = getattr(target, owner)
    real = getattr(target, attr)

    def patched(*args, **kwargs):
        if world.rank == rank:
            boom()
        return real(*args, **kwargs)

    setattr(target, attr, patched)
    code = main.main([command, f"{folder}/case.toml", "--quiet"])
    with open(f"{folder}/rc.{world.rank}", "w") as f:
        f.write(str(code))
    sys.exit(code)
''')


@pytest.fixture(scope="module")
def stage_case(tmp_path_factory) -> Path:
    """A small elastic box with its training store and ROM file (2 ranks)."""
    from helpers import clean_mpi_env

    if COMM.size != 1:
        pytest.skip("starts its own mpirun")
    folder = tmp_path_factory.mktemp("stages")
    (folder / "case.toml").write_text(STAGE_CASE)
    ddrom = str(Path(sys.executable).parent / "ddrom")
    for command in ("hf", "offline"):
        r = subprocess.run(["timeout", "300", "mpirun", "-n", "2", "--oversubscribe", ddrom, command, "case.toml",
                            "--quiet"], cwd=folder, env=clean_mpi_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    return folder


#: (command, module, function, rank, collective): a function each stage calls, and whether the
#: raise happens inside a collective block (every rank then exits with one status) or outside
#: one (the job is aborted: no hang, but no collective error -- measured: exit 1, or 130 for an
#: interrupt; the offline build and the online solver are not wrapped as a whole).
STAGES = {
    "mesh": ("hf", "ddrom.mesh.generators", "generate_slice", "0", True),     # each rank builds its slice
    "hf": ("hf", "ddrom.materials.elastic", "Elastic.update", "last", True),   # the constitutive update
    "offline": ("offline", "ddrom.rom.offline", "build_reduced_model", "last", False),
    "online": ("online", "ddrom.rom.online", "ReducedSolver.external_force", "last", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage, kind", [(s, k) for s in STAGES for k in ("systemexit", "keyboard", "base")])
def test_each_stage_with_one_rank_raising_any_kind_stops_every_rank(stage_case, stage, kind, tmp_path):
    """One rank raises (a library's sys.exit, an interrupt, a BaseException) inside the mesh
    generation, the HF constitutive update, the offline build or the online solver: every rank
    stops in bounded time with a non-zero status (2, 130 for an interrupt, or the job aborted
    when the raise is outside a collective block), the message is printed, nothing incomplete
    is left at a final path. Measured: 4-8 s per drill on a loaded 2-core machine."""
    from helpers import clean_mpi_env

    command, module, name, rank, inside = STAGES[stage]
    folder = tmp_path / "case"
    shutil.copytree(stage_case, folder, ignore=shutil.ignore_patterns(".ddrom.lock*"))
    if command == "hf":
        for p in (folder / "out" / "stages").glob("hf_*.h5*"):
            p.unlink()
    before = sorted(p.name for p in (folder / "out" / "stages").iterdir())
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    np_ = 3 if kind == "keyboard" else 2
    t0 = time.perf_counter()
    r = subprocess.run(["timeout", "-s", "KILL", "120", "mpirun", "-n", str(np_), "--oversubscribe",
                        sys.executable, str(script), str(folder), command, module, name, rank, kind],
                       env=clean_mpi_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert r.returncode not in (0, -9, 137) and seconds < 120, (r.returncode, seconds, r.stderr[-3000:])
    codes = _codes(folder, np_)
    if inside:      # one collective error: every rank records the same non-zero status
        assert codes[0] in (2, 130) and codes == [codes[0]] * np_, (codes, r.stderr[-3000:])
    else:           # aborted: a rank that recorded its status exits non-zero
        assert all(c is None or c != 0 for c in codes), (codes, r.stderr[-3000:])
    assert KINDS[kind][1].split(": ")[-1] in r.stderr, r.stderr[-3000:]
    import json
    import re

    import h5py

    out = folder / "out" / "stages"
    for n in sorted(p.name for p in out.iterdir()):
        if n in before or n.startswith(".ddrom") or n.endswith(".partial") or re.search(r"\.(tmp|partial)\.\d+$", n):
            continue    # a resumable store; a killed writer's private temporary (the next writer removes it)
        # anything new at a final path is complete: rank 0 may finish an online result before
        # the job is aborted for the other rank's raise outside a collective block
        if n.endswith(".json"):
            json.loads((out / n).read_text())
        else:
            assert n.endswith(".h5"), n
            with h5py.File(out / n, "r") as f:           # every dataset read: Fletcher32 checked
                f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
