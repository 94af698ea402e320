"""ddrom: distributed-memory reduced-order models of nonlinear solid mechanics.

The library API, one function per stage (objects in, objects out, no printing; each takes
a communicator -- an mpi4py or petsc4py one -- and a case: a
:class:`~ddrom.workflow.case.Case` or the path of a case file)::

    import ddrom
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    case = ddrom.load_case("cases/demo.toml")            # or ddrom.Case.from_dict({...}, folder)
    ddrom.run_hf(case, comm)                             # training sweep -> snapshot store
    ddrom.build_rom(case, comm)                          # store -> ROM file
    runs = ddrom.run_rom(case, comm, [{"T_max": 700.0, "S_max": 130.0}], enrich=True)
    errors = ddrom.compare_runs(case, comm, runs.runs, runs.model)   # needs the HF test store
    summary = ddrom.run_pipeline(case, comm)             # all of it, as `ddrom run`

The library does not lock output folders (the command line does); hold
``ddrom.output_lock(case, comm)`` around the calls when another writer may use the same
folder at the same time.

Progress goes to the ``ddrom`` logger (rank 0): ``ddrom.configure_logging()`` shows it.
Option defaults live in one place each (:mod:`ddrom.workflow.options`). See ``docs/`` for
the architecture and the algorithms.
"""
from ddrom._env import configure_environment as _configure_environment

_configure_environment()

__version__ = "0.1.0"

#: name -> (module, attribute) of the public API, imported on first use (``import ddrom``
#: stays light: no MPI, PETSc or h5py until a stage is called)
_API = {
    "load_case": ("ddrom.workflow.case", "load_case"),
    "Case": ("ddrom.workflow.case", "Case"),
    "run_hf": ("ddrom.workflow.hf", "hf_sweep"),
    "build_rom": ("ddrom.workflow.rom", "build_rom"),
    "run_rom": ("ddrom.workflow.rom", "run_rom"),
    "compare_runs": ("ddrom.workflow.rom", "compare_runs"),
    "reconstruct_fields": ("ddrom.workflow.rom", "reconstruct_fields"),
    "calibrate": ("ddrom.workflow.rom", "calibrate"),
    "run_pipeline": ("ddrom.workflow.rom", "run"),
    "cluster": ("ddrom.workflow.cluster", "cluster_report"),
    "import_series": ("ddrom.workflow.importing", "import_series"),
    "import_many": ("ddrom.workflow.importing", "import_many"),
    "make_report": ("ddrom.workflow.report", "report"),
    "output_lock": ("ddrom.workflow.locking", "output_lock"),
    "configure_logging": ("ddrom.parallel.log", "configure_logging"),
    "DdromError": ("ddrom.parallel.errors", "DdromError"),
    "CollectiveError": ("ddrom.parallel.errors", "CollectiveError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        mod, attr = _API[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddrom' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
