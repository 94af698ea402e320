#!/usr/bin/env bash
# Installs what ddrom needs on a Debian 12 machine, idempotently:
#  - the HPC stack from Debian packages (MPI, PETSc, SLEPc, petsc4py, slepc4py, mpi4py, parallel h5py),
#    and cmake + gfortran for the compiled material plugins (cmake/, tested by tests/test_plugins.py)
#  - a venv with system site packages holding ddrom (editable) and the PyPI dependencies.
# Quick when everything is already there. VENV (default .venv) and EXTRAS (default test) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
DEB_PKGS="openmpi-bin libopenmpi-dev python3-mpi4py python3-petsc4py python3-slepc4py python3-h5py-mpi \
python3-numpy python3-scipy libopenblas0-pthread python3-venv python3-pip \
cmake gfortran"
# The test suite also checks `ddrom import` against results written by an independent solver
# (tests/test_import_dolfinx.py): Debian's dolfinx, with WITH_DOLFINX=1 (`make test` sets it).
if [ "${WITH_DOLFINX:-0}" = 1 ]; then DEB_PKGS="$DEB_PKGS python3-dolfinx"; fi
# ... and reads CalculiX results and decks produced by Debian's CalculiX 2.20 (tests/test_calculix.py):
# calculix-ccx, with WITH_CALCULIX=1 (`make test` sets it).
if [ "${WITH_CALCULIX:-0}" = 1 ]; then DEB_PKGS="$DEB_PKGS calculix-ccx"; fi

missing=""
for p in $DEB_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing Debian packages:$missing" >&2
    echo "install.sh: run as root, or see README (installing on a cluster without apt)" >&2
    exit 1
  fi
  echo "install.sh: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi

stamp="$VENV/.ddrom-installed-$EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
