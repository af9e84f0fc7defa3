#!/usr/bin/env bash
# Create a TPU VM slice, install simclr_jax on every worker, run the same command on all of them,
# collect their logs, stop the run, and delete the slice when asked to.
#
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh setup                  # copy this checkout to every worker, pip-install it
#   launch/tpu_pod.sh run CONFIG WORKDIR [--config.x=y ...] [-- MORE_MAIN_FLAGS]
#   launch/tpu_pod.sh logs [--log-dir=DIR]   # copy every worker's log here
#   launch/tpu_pod.sh logs --follow [--worker=N]
#   launch/tpu_pod.sh status
#   launch/tpu_pod.sh stop [--force]         # SIGTERM simclr_jax.main on every worker, then SIGKILL
#   launch/tpu_pod.sh delete [--yes]         # asks you to type the slice name unless --yes
#
# Settings: environment variables, or the flag beside each (anywhere on the line, with '='):
#   TPU_NAME          --tpu-name=NAME            required
#   ZONE              --zone=ZONE                required
#   ACCELERATOR_TYPE  --accelerator-type=vN-M    required by create and run (v3-32, v3-128, ...)
#   PROJECT           --project=PROJECT          optional (default: gcloud's configured project)
#   RUNTIME           --runtime=VERSION          optional (default: by TPU generation)
#   STOP_TIMEOUT      --stop-timeout=SECONDS     stop: wait this long after SIGTERM (default 120)
#   DRY_RUN=1         --dry-run                  print every command instead of running it
#   --allow-local-workdir   run: accept a WORKDIR that is not gs:// on a multi-host slice
#
# Each worker appends to ~/simclr_logs/simclr-$(hostname).log; every `run` first writes a line
# '==== simclr_jax.main started <UTC time> ====', so earlier attempts stay in the log.
# `stop` sends SIGTERM once (simclr_jax.main finishes its step, saves a checkpoint and exits 143),
# waits up to STOP_TIMEOUT seconds, then SIGKILLs what is left; --force sends SIGKILL at once.
# --dry-run prints each gcloud/tar/mkdir command on its own line, shell-quoted so it can be pasted.
# Written for bash 3.2 or newer. Not yet run against a real pod by the maintainers (no TPU in
# development); tests/test_launch.py checks the dry-run commands. See launch/README.md.
set -euo pipefail

PROG=tpu_pod.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f $ROOT/launch/common.sh ]] ||
  { echo "$PROG: error: $ROOT/launch/common.sh is missing (run the script from its checkout)" >&2
    exit 2; }
# shellcheck source=launch/common.sh
. "$ROOT/launch/common.sh"
# Python >= 3.11 is needed by jax 0.10.2; the TPU runtimes ship Ubuntu 22.04's Python 3.10.
REMOTE_PYTHON="${REMOTE_PYTHON:-python3.11}"
JAX_TPU_PIN='jax[tpu]==0.10.2'
# Remote paths, relative to each worker's home directory.
REMOTE_CODE=simclr_jax
REMOTE_VENV=simclr_venv
REMOTE_LOGS=simclr_logs
# Matches the training process but not the shell that gcloud ssh runs it from: that shell's
# command line starts with bash (or sh), and contains this pattern only after it.
MAIN_PATTERN='^python3 -m simclr_jax[.]main'
PGREP_MAIN="pgrep -f '$MAIN_PATTERN'"

yes=0 force=0 follow=0 allow_local_workdir=0 worker=0 log_dir=''
positional=() main_args=()
while (( $# )); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --yes | -y) yes=1 ;;
    --follow | -f) follow=1 ;;
    --force) force=1 ;;
    --allow-local-workdir) allow_local_workdir=1 ;;
    --tpu-name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --runtime=*) RUNTIME="${1#*=}" ;;
    --stop-timeout=*) STOP_TIMEOUT="${1#*=}" ;;
    --log-dir=*) log_dir="${1#*=}" ;;
    --worker=*) worker="${1#*=}" ;;
    --tpu-name | --zone | --accelerator-type | --project | --runtime | --stop-timeout | \
      --log-dir | --worker)
      die "write $1=VALUE (with '=')" ;;
    -h | --help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; main_args+=("$@"); break ;;
    -*) main_args+=("$1") ;;  # For simclr_jax.main (run only), e.g. --config.train.epochs=10.
    *) positional+=("$1") ;;
  esac
  shift
done

(( ${#positional[@]} )) || { usage "${BASH_SOURCE[0]}" >&2; die "no subcommand given"; }
cmd="${positional[0]}"
args=(${positional[@]+"${positional[@]:1}"})
case "$cmd" in
  create | setup | run | logs | status | stop | delete) ;;
  *) die "unknown subcommand '$cmd' (create, setup, run, logs, status, stop, delete)" ;;
esac
if [[ $cmd != run ]]; then
  (( ${#args[@]} == 0 )) || die "$cmd takes no arguments, got '${args[0]}'"
  (( ${#main_args[@]} == 0 )) || die "unknown option '${main_args[0]}' for $cmd"
fi
(( ! force )) || [[ $cmd == stop ]] || die "--force is an option of stop only, not of $cmd"

TPU_NAME="${TPU_NAME:-}" ZONE="${ZONE:-}" PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}" RUNTIME="${RUNTIME:-}"
STOP_TIMEOUT="${STOP_TIMEOUT:-120}"
[[ -n $TPU_NAME ]] || die "TPU_NAME is not set (export TPU_NAME=NAME or pass --tpu-name=NAME)"
[[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "TPU_NAME='$TPU_NAME' is not a valid name (lowercase letters, digits and '-', \
starting with a letter)"
[[ -n $ZONE ]] || die "ZONE is not set (export ZONE=europe-west4-a or pass --zone=ZONE)"
if [[ -z $ACCELERATOR_TYPE ]]; then
  [[ $cmd != create && $cmd != run ]] ||
    die "ACCELERATOR_TYPE is not set (export ACCELERATOR_TYPE=v3-32 or pass \
--accelerator-type=v3-32)"
elif ! [[ $ACCELERATOR_TYPE =~ ^v[0-9]+(e|p|litepod)?-[1-9][0-9]*$ ]]; then
  die "ACCELERATOR_TYPE='$ACCELERATOR_TYPE' is not of the form vN-M \
(e.g. v3-32, v3-128, v4-64, v5p-128)"
fi
[[ $worker =~ ^[0-9]+$ ]] || die "--worker=$worker is not a worker number (0, 1, ...)"
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] ||
  die "STOP_TIMEOUT='$STOP_TIMEOUT' is not a whole number of seconds"

num_hosts() {  # TPU VM hosts in a slice: 8 cores per host (v2-v5p), 4 chips per host (v5e, v6e).
  local generation="${1%-*}" size="${1##*-}"
  if (( size <= 8 )); then echo 1
  elif [[ $generation == v5litepod || $generation == v6e ]]; then echo $(( size / 4 ))
  else echo $(( size / 8 ))
  fi
}

if [[ -z $RUNTIME && -n $ACCELERATOR_TYPE ]]; then
  case "${ACCELERATOR_TYPE%-*}" in  # cloud.google.com/tpu/docs/runtimes
    v6e) RUNTIME=v2-alpha-tpuv6e ;;
    v5p) RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod) RUNTIME=v2-alpha-tpuv5-lite ;;
    *) RUNTIME=tpu-ubuntu2204-base ;;
  esac
fi

project_flag=()
[[ -z $PROJECT ]] || project_flag=(--project="$PROJECT")

ssh_workers() {  # ssh_workers WORKER COMMAND: one gcloud ssh; WORKER=all runs it on every worker.
  do_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" \
    ${project_flag[@]+"${project_flag[@]}"} --worker="$1" --command "$2"
}

# ~ and $(hostname) are expanded on each worker, so every host writes its own file.
# shellcheck disable=SC2088
log_file="~/$REMOTE_LOGS/simclr-\$(hostname).log"

case "$cmd" in
  create)
    do_cmd gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      ${project_flag[@]+"${project_flag[@]}"} --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME"
    ;;

  setup)
    tarball="${TMPDIR:-/tmp}/simclr_jax_$TPU_NAME.tgz"
    do_cmd tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=__pycache__ \
      --exclude='*.egg-info' -czf "$tarball" .
    do_cmd gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$REMOTE_CODE.tgz" --zone="$ZONE" \
      ${project_flag[@]+"${project_flag[@]}"} --worker=all
    # apt's lock timeout: a fresh VM may still be running unattended-upgrades.
    apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q"
    ssh_workers all "set -e; $apt update; $apt install -y $REMOTE_PYTHON ${REMOTE_PYTHON}-venv; \
mkdir -p ~/$REMOTE_CODE; tar -C ~/$REMOTE_CODE -xzf ~/$REMOTE_CODE.tgz; \
[ -x ~/$REMOTE_VENV/bin/python3 ] || $REMOTE_PYTHON -m venv ~/$REMOTE_VENV; \
. ~/$REMOTE_VENV/bin/activate; python3 -m pip install -q --upgrade pip; \
python3 -m pip install -q -e ~/$REMOTE_CODE '$JAX_TPU_PIN'; \
echo \"\$(hostname): \$(python3 -c 'import jax, simclr_jax; print(\"jax\", jax.__version__)')\""
    ;;

  run)
    (( ${#args[@]} == 2 )) || die "run needs CONFIG WORKDIR, then --config.x=y overrides \
(with '='); got ${#args[@]} positional argument(s): ${args[*]:-none}"
    config="${args[0]}" workdir="${args[1]}"
    [[ $config != /* && -f "$ROOT/${config%%:*}" ]] ||
      die "CONFIG '$config' is not a file of this checkout, relative to its root \
(e.g. configs/tpu_v3_128.py)"
    hosts="$(num_hosts "$ACCELERATOR_TYPE")"
    if (( hosts > 1 && ! allow_local_workdir )) && [[ $workdir != gs://* ]]; then
      die "WORKDIR '$workdir' is not gs://: a $ACCELERATOR_TYPE slice has $hosts hosts, which \
must all write to the same shared storage (use gs://BUCKET/..., or --allow-local-workdir for a \
shared mount)"
    fi
    main="python3 -m simclr_jax.main --config=$(quote "$config") --workdir=$(quote "$workdir")"
    for a in ${main_args[@]+"${main_args[@]}"}; do main+=" $(quote "$a")"; done
    # simclr_jax.main starts jax.distributed on its own: JAX reads the slice's layout from the
    # TPU VM metadata.
    ssh_workers all "set -e; cd ~/$REMOTE_CODE; . ~/$REMOTE_VENV/bin/activate; \
mkdir -p ~/$REMOTE_LOGS; \
if $PGREP_MAIN > /dev/null; then \
echo \"\$(hostname): simclr_jax.main is already running\" >&2; exit 1; fi; \
echo \"==== simclr_jax.main started \$(date -u +%Y-%m-%dT%H:%M:%SZ) ====\" \
>> $log_file; \
nohup $main >> $log_file 2>&1 < /dev/null & \
echo \"\$(hostname): started, log $log_file\""
    ;;

  logs)
    if (( follow )); then
      ssh_workers "$worker" "tail -n 100 -F $log_file"
    else
      log_dir="${log_dir:-tpu_logs/$TPU_NAME}"
      do_cmd mkdir -p "$log_dir"
      # Every worker's file has its own name (its hostname), so one copy from all cannot clash.
      do_cmd gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$REMOTE_LOGS" "$log_dir" \
        --zone="$ZONE" ${project_flag[@]+"${project_flag[@]}"} --worker=all
      (( dry_run )) || echo "$PROG: logs in $log_dir/$REMOTE_LOGS/" >&2
    fi
    ;;

  status)
    do_cmd gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
      ${project_flag[@]+"${project_flag[@]}"} \
      --format='yaml(state,health,acceleratorType,runtimeVersion)'
    ssh_workers all "if $PGREP_MAIN > /dev/null; then s=running; else s='not running'; fi; \
echo \"\$(hostname): simclr_jax.main \$s; last log line: \$(tail -n 1 $log_file 2> /dev/null)\""
    ;;

  stop)
    # SIGTERM once: simclr_jax.main then stops at a step boundary with a checkpoint; a second
    # SIGTERM would make it exit without one. A process that waits on a dead host's collective
    # never reaches that boundary, hence the SIGKILL after STOP_TIMEOUT seconds.
    # shellcheck disable=SC2016  # $p, $h, $t and $1 are expanded on each worker.
    remote="p=$(quote "$MAIN_PATTERN"); h=\$(hostname); "
    remote+='running() { pgrep -f "$p" > /dev/null; }; '
    remote+='gone_within() { t=0; while running && [ "$t" -lt "$1" ]; do sleep 1; t=$((t + 1)); '
    remote+='done; ! running; }; '
    remote+='if ! running; then echo "$h: was not running"; exit 0; fi; '
    if (( force )); then
      remote+='pkill -KILL -f "$p"; what=killed; '
    else
      remote+="pkill -TERM -f \"\$p\"; if gone_within $STOP_TIMEOUT; then "
      remote+='echo "$h: stopped after $t s"; exit 0; fi; '
      remote+="pkill -KILL -f \"\$p\"; what='killed after $STOP_TIMEOUT s'; "
    fi
    # A killed process is gone within moments; 30 s only bounds the wait if it is not.
    remote+='if gone_within 30; then echo "$h: $what"; exit 0; fi; '
    remote+='echo "$h: still running 30 s after SIGKILL" >&2; exit 1'
    ssh_workers all "$remote"
    ;;

  delete)
    if (( ! yes )); then
      printf '%s' "Delete TPU slice '$TPU_NAME' in $ZONE? Type its name to confirm: " >&2
      answer=''
      read -r answer || true
      [[ -t 0 ]] || echo >&2  # The typed newline ends the prompt's line only on a terminal.
      [[ $answer == "$TPU_NAME" ]] ||
        die "not deleted: confirmation did not match (pass --yes to skip it)"
    fi
    do_cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" \
      ${project_flag[@]+"${project_flag[@]}"} --quiet
    ;;
esac
