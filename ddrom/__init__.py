"""ddrom: distributed-memory reduced-order models of nonlinear solid mechanics."""
from ddrom._env import configure_environment as _configure_environment

_configure_environment()

__version__ = "0.1.0"
