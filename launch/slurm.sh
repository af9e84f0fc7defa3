#!/usr/bin/env bash
# simclr_jax on a multi-node GPU cluster under SLURM: one `srun python3 -m simclr_jax.main` step.
#
#   bash launch/slurm.sh [--dry-run] CONFIG WORKDIR [--config.x=y ...]   # submits itself (sbatch)
#   sbatch launch/slurm.sh CONFIG WORKDIR [--config.x=y ...]    # from the repo root; #SBATCH below
#
# Settings (environment): NODES (default 1), GPUS_PER_NODE (8), PROCESS_PER=gpu|node (gpu),
# CPUS_PER_TASK (the node's CPUs / its tasks), PARTITION, ACCOUNT, TIME (24:00:00), LOG_DIR (the
# current directory), PYTHON (python3: activate the environment that has simclr_jax and
# jax[cuda12] before submitting; sbatch passes the environment on). DRY_RUN=1 or --dry-run prints
# the sbatch command and the commands the job would run, shell-quoted, one per line, and submits
# nothing.
#
# PROCESS_PER=gpu (default): NODES x GPUS_PER_NODE processes (--ntasks-per-node=GPUS_PER_NODE,
#   every task may see all the node's GPUs). JAX's SLURM detection (SLURM_PROCID, SLURM_NTASKS,
#   SLURM_LOCALID) gives each process the one GPU numbered SLURM_LOCALID. Do not add
#   --gpus-per-task=1 or --gpu-bind: the task would then see its GPU as number 0 and JAX would ask
#   for number SLURM_LOCALID; if your cluster binds GPUs to tasks anyway, export
#   JAX_LOCAL_DEVICE_IDS=0 before submitting.
# PROCESS_PER=node: NODES processes (--ntasks-per-node=1), each owning all GPUS_PER_NODE GPUs.
#   JAX's SLURM detection would still pin each process to GPU SLURM_LOCALID (= 0), so the job sets
#   JAX_LOCAL_DEVICE_IDS=0,...,GPUS_PER_NODE-1 and every process sees all its node's GPUs.
# The same --config works for both: the config's batch is global, split over all JAX devices.
# CPUs: each task decodes and augments its share of the images on the CPU, and many clusters give
#   a task one CPU unless asked. Without CPUS_PER_TASK the job takes whole nodes (sbatch
#   --exclusive) and srun gives each task SLURM_CPUS_ON_NODE / tasks per node CPUs (at least 1).
#   With CPUS_PER_TASK=N (inside a job it defaults to SLURM_CPUS_PER_TASK, which sbatch
#   --cpus-per-task sets), sbatch and srun both get --cpus-per-task=N and no --exclusive. srun
#   gets it explicitly because srun in newer Slurm releases does not take sbatch's.
# WORKDIR must be storage every node can reach (a shared filesystem or gs://).
#
# Written for bash 3.2 or newer. Not yet run on a real cluster by the maintainers (no GPU in
# development); tests/test_launch.py checks the dry-run commands. See launch/README.md.
#
# Defaults for `sbatch launch/slurm.sh` (bash launch/slurm.sh passes its own on the command line):
#SBATCH --job-name=simclr
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=simclr-%j.out
set -euo pipefail

PROG=slurm.sh
in_job=0
[[ -z ${SLURM_JOB_ID:-} ]] || in_job=1
# Under sbatch this file runs from a spool copy, so inside a job the repo root is the job's
# working directory (bash launch/slurm.sh submits with --chdir=ROOT).
if (( in_job )); then ROOT="$PWD"; else ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; fi
[[ -f $ROOT/launch/common.sh ]] ||
  { echo "$PROG: error: $ROOT/launch/common.sh is missing (inside a job the working directory \
must be the repo root: submit from it, or with sbatch --chdir=REPO)" >&2; exit 2; }
# shellcheck source=launch/common.sh
. "$ROOT/launch/common.sh"

positional=() main_args=()
while (( $# )); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; main_args+=("$@"); break ;;
    -*) main_args+=("$1") ;;  # For simclr_jax.main, e.g. --config.train.epochs=10.
    *) positional+=("$1") ;;
  esac
  shift
done
(( ${#positional[@]} == 2 )) || die "need CONFIG WORKDIR, then --config.x=y overrides (with '='); \
got ${#positional[@]} positional argument(s): ${positional[*]:-none}"
config="${positional[0]}" workdir="${positional[1]}"

PROCESS_PER="${PROCESS_PER:-gpu}"
NODES="${NODES:-${SLURM_JOB_NUM_NODES:-1}}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
CPUS_PER_TASK="${CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-}}"
PYTHON="${PYTHON:-python3}"
[[ $PROCESS_PER == gpu || $PROCESS_PER == node ]] ||
  die "PROCESS_PER='$PROCESS_PER' must be gpu or node"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "NODES='$NODES' must be a positive integer"
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] ||
  die "GPUS_PER_NODE='$GPUS_PER_NODE' must be a positive integer"
[[ -z $CPUS_PER_TASK || $CPUS_PER_TASK =~ ^[1-9][0-9]*$ ]] ||
  die "CPUS_PER_TASK='$CPUS_PER_TASK' must be a positive integer"
[[ $config != /* && -f "$ROOT/${config%%:*}" ]] ||
  die "CONFIG '$config' is not a file of the checkout at $ROOT, relative to its root \
(e.g. configs/gpu_8x.py)"

if [[ $PROCESS_PER == gpu ]]; then tasks_per_node="$GPUS_PER_NODE"; else tasks_per_node=1; fi
step_resources=(--nodes="$NODES" --ntasks-per-node="$tasks_per_node"
                --gpus-per-node="$GPUS_PER_NODE")
# The srun step's --cpus-per-task: CPUS_PER_TASK, or the node's CPUs shared by its tasks.
if [[ -n $CPUS_PER_TASK ]]; then
  srun_cpus=(--cpus-per-task="$CPUS_PER_TASK")
elif (( ! in_job )); then
  # Only known inside the job; the dry run prints the expression, quoted (see its '#' line).
  srun_cpus=("--cpus-per-task=\$((SLURM_CPUS_ON_NODE/$tasks_per_node))")
elif [[ ${SLURM_CPUS_ON_NODE:-} =~ ^[1-9][0-9]*$ ]]; then
  cpus=$(( SLURM_CPUS_ON_NODE / tasks_per_node ))
  (( cpus >= 1 )) || cpus=1
  srun_cpus=(--cpus-per-task="$cpus")
else
  warn "SLURM_CPUS_ON_NODE='${SLURM_CPUS_ON_NODE:-}' is not a CPU count; srun gets the \
cluster's default CPUs per task (set CPUS_PER_TASK)"
  srun_cpus=()
fi

if (( ! in_job )); then
  # Submit this same file; the job runs the branch below with the settings passed in --export.
  log_dir="${LOG_DIR:-$PWD}"
  sbatch_args=(--job-name=simclr ${step_resources[@]+"${step_resources[@]}"})
  if [[ -n $CPUS_PER_TASK ]]; then
    sbatch_args+=(--cpus-per-task="$CPUS_PER_TASK")
  else
    sbatch_args+=(--exclusive)  # The whole nodes, so that the job owns all their CPUs.
  fi
  sbatch_args+=(--time="${TIME:-24:00:00}")
  [[ -z ${PARTITION:-} ]] || sbatch_args+=(--partition="$PARTITION")
  [[ -z ${ACCOUNT:-} ]] || sbatch_args+=(--account="$ACCOUNT")
  sbatch_args+=(--output="$log_dir/simclr-%j.out" --chdir="$ROOT"
                --export="ALL,NODES=$NODES,GPUS_PER_NODE=$GPUS_PER_NODE,PROCESS_PER=$PROCESS_PER")
  do_cmd mkdir -p "$log_dir"  # sbatch does not create the --output directory.
  do_cmd sbatch ${sbatch_args[@]+"${sbatch_args[@]}"} "$ROOT/launch/slurm.sh" "$config" \
    "$workdir" ${main_args[@]+"${main_args[@]}"}
  (( dry_run )) || exit 0
  if [[ -n $CPUS_PER_TASK ]]; then
    echo "# inside the job, launch/slurm.sh then runs:"
  else
    echo "# inside the job, launch/slurm.sh then runs (with the quoted \
\$((SLURM_CPUS_ON_NODE/$tasks_per_node)) worked out there):"
  fi
fi

# simclr_jax.main starts jax.distributed (which reads the SLURM_* variables) on its own.
export_var() {
  if (( dry_run )); then echo "export $1=$(quote "$2")"; else export "$1=$2"; fi
}
if [[ $PROCESS_PER == node ]]; then
  ids="$(seq -s, 0 $(( GPUS_PER_NODE - 1 )))"
  export_var JAX_LOCAL_DEVICE_IDS "$ids"
fi
# --label prefixes every output line with its task number; all tasks write the job's one log.
do_cmd srun ${step_resources[@]+"${step_resources[@]}"} ${srun_cpus[@]+"${srun_cpus[@]}"} \
  --label "$PYTHON" -m simclr_jax.main --config="$config" --workdir="$workdir" \
  ${main_args[@]+"${main_args[@]}"}
