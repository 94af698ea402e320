"""Layer 1: communicators, collective error handling, rank-0 logging and progress, timers."""
from ddrom.parallel.comm import as_mpi, as_petsc, world
from ddrom.parallel.errors import (CollectiveError, DdromError, check_all, collective, describe_exception,
                                   raise_collective, root_only)
from ddrom.parallel.log import Progress, get_logger, rank0_print
from ddrom.parallel.stages import StagePrinter
from ddrom.parallel.timers import Timers

__all__ = [
    "as_mpi", "as_petsc", "world", "CollectiveError", "DdromError", "collective", "check_all",
    "raise_collective", "describe_exception", "root_only",
    "Progress", "get_logger", "rank0_print", "Timers", "StagePrinter",
]
