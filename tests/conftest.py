"""Import ddrom before anything else: it locates PETSc/SLEPc and selects parallel h5py."""
import os
import sys

import ddrom  # noqa: F401

sys.path.insert(0, os.path.dirname(__file__))   # tests/helpers.py
