#!/usr/bin/env bash
# Submits the whole ddrom pipeline of a case as SLURM jobs chained by dependencies:
#
#   hf.sbatch (x HF_JOBS) --afterok--> offline.sbatch --afterok--> online_array.sbatch
#
#   DDROM=$PWD/.venv NTASKS_HF=32 PARAM_FILE=params.txt jobscripts/pipeline.sh cases/demo.toml
#
# Prints one line per submitted job: "<stage> <job id>". A stage that fails (non-zero
# exit) makes SLURM cancel the stages after it (--kill-on-invalid-dep=yes) instead of
# leaving them pending forever.
#
# Variables (exported to every job):
#   DDROM, LAUNCHER, MPIRUN_FLAGS, SRUN_FLAGS, PETSC_OPTIONS, THREADS: see hf.sbatch
#   NTASKS            ranks of every stage unless set per stage (default 4)
#   NTASKS_HF, NTASKS_OFFLINE, NTASKS_ONLINE   per stage (online default 1)
#   HF_JOBS           split the HF sweep over this many chained jobs (default 1), each
#                     computing at most MAX_SIMULATIONS simulations (resume makes it work)
#   MAX_SIMULATIONS   per HF job (default: all)
#   PARAM_FILE        online points, one per line (see online_array.sbatch); empty: the
#                     case's [test] parameters in one job
#   ONLINE_MODE       array (default: one array task per point) | packed (one allocation)
#   RANKS_PER_RUN     ranks of each ROM run (packed mode)
#   LOG_DIR           folder of the job logs %x-%j.out and JSON summaries (default: .)
#   SBATCH_FLAGS      extra sbatch flags for every job (--partition, --account, --time, ...)
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$1" ] || { echo "pipeline.sh: no case file $1" >&2; exit 2; }
CASE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
export CASE
LOG_DIR=${LOG_DIR:-.}
mkdir -p "$LOG_DIR"
NTASKS=${NTASKS:-4}
HF_JOBS=${HF_JOBS:-1}
if [ -n "${PARAM_FILE:-}" ]; then
  [ -f "$PARAM_FILE" ] || { echo "pipeline.sh: no parameter file $PARAM_FILE" >&2; exit 2; }
  PARAM_FILE=$(cd "$(dirname "$PARAM_FILE")" && pwd)/$(basename "$PARAM_FILE")
  export PARAM_FILE
fi
export DDROM LAUNCHER MPIRUN_FLAGS SRUN_FLAGS PETSC_OPTIONS THREADS MAX_SIMULATIONS RANKS_PER_RUN
read -r -a extra <<< "${SBATCH_FLAGS:-}"

submit() {  # submit DEPENDENCY SBATCH_ARGS...: print the job id
  local dep=$1; shift
  local d=(); [ -n "$dep" ] && d=(--dependency="afterok:$dep" --kill-on-invalid-dep=yes)
  local out
  out=$(cd "$LOG_DIR" && sbatch --parsable --export=ALL "${d[@]}" "${extra[@]}" "$@") || return 1
  echo "${out%%;*}"
}

prev=""
for k in $(seq 1 "$HF_JOBS"); do
  prev=$(submit "$prev" --ntasks="${NTASKS_HF:-$NTASKS}" "$here/hf.sbatch")
  echo "hf $prev"
done
prev=$(submit "$prev" --ntasks="${NTASKS_OFFLINE:-$NTASKS}" "$here/offline.sbatch")
echo "offline $prev"
online=(--ntasks="${NTASKS_ONLINE:-1}")
if [ -n "${PARAM_FILE:-}" ]; then
  n=$(grep -cvE '^[[:space:]]*(#|$)' "$PARAM_FILE" || true)
  [ "$n" -ge 1 ] || { echo "pipeline.sh: $PARAM_FILE has no point" >&2; exit 2; }
  if [ "${ONLINE_MODE:-array}" = array ]; then
    online+=(--array="1-$n")
  else
    online+=(--output=%x-%j.out)
  fi
else
  online+=(--output=%x-%j.out)
fi
prev=$(submit "$prev" "${online[@]}" "$here/online_array.sbatch")
echo "online $prev"
