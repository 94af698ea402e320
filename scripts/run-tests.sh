#!/usr/bin/env bash
# Runs the whole test suite the way CI does:
#   1. every test on 1 rank (mpi-marked tests included, under a singleton MPI);
#   2. the mpi-marked tests again on 3 ranks (odd, uneven partitions).
# Ranks > 0 write their pytest output to files that are shown if that run fails.
# Extra arguments are passed to pytest (e.g. -k pattern, a test file). MARKERS selects tests
# by marker in both stages, e.g. MARKERS="not slow and not infra" (`make test-fast`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NP=${NP:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export PYTHONDONTWRITEBYTECODE=1
logdir=$(mktemp -d)
status=0

MARKERS=${MARKERS:-}
one=(); mpi=(-m mpi)
if [ -n "$MARKERS" ]; then one=(-m "$MARKERS"); mpi=(-m "mpi and ($MARKERS)"); fi

echo "=== tests on 1 rank ==="
timeout 2400 "$PY" -m pytest --with-mpi -q "${one[@]}" "$@" || status=$?
[ $status -eq 5 ] && status=0   # no test selected is not a failure of this stage

echo "=== mpi tests on $NP ranks ==="
timeout 2400 mpirun -n "$NP" --oversubscribe bash -c '
  if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec "$0" -m pytest --with-mpi -q -p no:cacheprovider "$@";
  else exec "$0" -m pytest --with-mpi -q -p no:cacheprovider "$@" > "'"$logdir"'/rank$OMPI_COMM_WORLD_RANK.log" 2>&1; fi' \
  "$PY" "${mpi[@]}" "$@"
s2=$?
[ $s2 -eq 5 ] && s2=0
if [ $s2 -ne 0 ]; then
  for f in "$logdir"/rank*.log; do [ -f "$f" ] && { echo "--- $f"; tail -50 "$f"; }; done
  status=$s2
fi
rm -rf "$logdir"
exit $status
