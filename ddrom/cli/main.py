"""The ``ddrom`` command.

Every subcommand runs alike under ``mpirun -n N`` or ``srun``. Arguments that argparse
does not know and that look like PETSc options (``-ksp_type cg``, ``-svd_type trlanczos``)
go to the PETSc options database, so users tune solvers the way PETSc users do.

Errors: a :class:`~ddrom.parallel.CollectiveError` (bad input found collectively,
divergence) is printed once by rank 0 and every rank exits with its status (2; 130 for
an interrupt). Anything else, ``SystemExit`` and every other ``BaseException`` included,
may have happened on some ranks only: that rank prints it and aborts the whole job
(``MPI_Abort``, non-zero status), so that no rank waits forever.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

import ddrom
from ddrom.parallel.errors import CollectiveError, DdromError

EXIT_USER_ERROR = 2


def _split_petsc_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``-name [value]`` PETSc options (single dash + letter) from ddrom's own arguments."""
    ours, petsc = [], []
    i = 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and not a.startswith("--") and len(a) > 2 and a[1].isalpha():
            petsc.append(a)
            if i + 1 < len(argv) and not (argv[i + 1].startswith("-") and not _is_number(argv[i + 1])):
                petsc.append(argv[i + 1])
                i += 1
        else:
            ours.append(a)
        i += 1
    return ours, petsc


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _init_petsc(petsc_args: list[str]) -> None:
    import petsc4py

    petsc4py.init([sys.argv[0]] + petsc_args)
    try:
        import slepc4py

        slepc4py.init([sys.argv[0]] + petsc_args)
    except ImportError:
        pass


def build_parser() -> argparse.ArgumentParser:
    from ddrom.cli import commands

    p = argparse.ArgumentParser(
        prog="ddrom",
        description="Distributed reduced-order models of nonlinear solid mechanics (MPI, PETSc, SLEPc). "
                    "PETSc options (-ksp_type, -pc_type, -svd_type, ...) may be appended to any command.")
    p.add_argument("--version", action="version", version=f"ddrom {ddrom.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, _) in commands.COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add_args(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, petsc_args = _split_petsc_options(argv)
    parser = build_parser()
    args = parser.parse_args(ours)
    if not args.command:
        parser.print_help()
        return EXIT_USER_ERROR
    _init_petsc(petsc_args)
    from mpi4py import MPI

    from ddrom.cli import commands
    from ddrom.parallel.log import configure_logging

    comm = MPI.COMM_WORLD
    configure_logging()
    run: Callable = commands.COMMANDS[args.command][2]
    try:
        return int(run(args, comm) or 0)
    except CollectiveError as exc:
        if comm.rank == 0:
            print(f"ddrom {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except DdromError as exc:
        print(f"ddrom {args.command}: error (rank {comm.rank}): {exc}", file=sys.stderr, flush=True)
        _abort(comm, EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"ddrom {args.command}: interrupted on rank {comm.rank}", file=sys.stderr, flush=True)
        _abort(comm, 130)
    except SystemExit as exc:
        # Not ours (argparse exits before this point): a library called sys.exit on this
        # rank, maybe on this rank only. Leaving alone would let the other ranks wait
        # forever in their next collective call; the whole job stops, never with status 0.
        from ddrom.parallel.errors import describe_exception

        code = exc.code if isinstance(exc.code, int) and exc.code != 0 else 1
        print(f"ddrom {args.command}: error on rank {comm.rank}: {describe_exception(exc)}",
              file=sys.stderr, flush=True)
        _abort(comm, code)
    except BaseException:  # noqa: BLE001 - last resort: never leave other ranks waiting
        print(f"ddrom {args.command}: internal error on rank {comm.rank}:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        _abort(comm, 1)
    return 1


def _abort(comm, code: int) -> None:
    if comm.size > 1:
        comm.Abort(code)
    sys.exit(code)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
