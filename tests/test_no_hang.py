"""No hang, ever: an exception of any kind on one rank reaches every rank.

In-process (mpi-marked, 1 and 3 ranks): every kind of exception raised on one rank
inside :func:`ddrom.parallel.collective` becomes the same CollectiveError on every rank.

Subprocesses (``mpirun -n 2`` and ``-n 3``, each under ``timeout``): the ``ddrom``
entry point with a command that raises on one rank only, inside a collective block
(every rank exits with the collective status, checked per rank) and outside one (the
job is aborted, no rank is left waiting). Before the fix a ``SystemExit`` on one rank
(meshio calls ``sys.exit(1)`` on files it cannot read) left the other ranks spinning in
``raise_collective`` forever.
"""
from __future__ import annotations

import os
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
