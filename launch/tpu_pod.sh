#!/usr/bin/env bash
# Create a TPU VM pod slice, install simclr_jax on every worker, and run the same command on all.
#
#   launch/tpu_pod.sh create            # creates $TPU_NAME ($ACCELERATOR_TYPE) in $ZONE
#   launch/tpu_pod.sh setup             # copies this checkout to every worker and pip-installs it
#   launch/tpu_pod.sh run CONFIG WORKDIR [--config.x=y ...]   # runs on all workers, logs to ~/simclr.log
#   launch/tpu_pod.sh logs              # tails worker 0's log
#   launch/tpu_pod.sh delete
#
# Not yet exercised on a real pod by the maintainers (no TPU access in development): treat as a
# starting point and report problems.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v3-128}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME" ;;
  setup)
    root="$(cd "$(dirname "$0")/.." && pwd)"
    tar -C "$root" --exclude=.venv --exclude=.git -czf /tmp/simclr_jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/simclr_jax.tgz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
    ssh_all 'mkdir -p ~/simclr_jax && tar -C ~/simclr_jax -xzf ~/simclr_jax.tgz &&
      cd ~/simclr_jax && python3 -m pip install -q -e . && python3 -m pip install -q "jax[tpu]==0.10.2"' ;;
  run)
    config="$2"; workdir="$3"; shift 3
    # TPU_WORKER_HOSTNAMES is set on TPU VMs, so main.py calls jax.distributed.initialize().
    ssh_all "cd ~/simclr_jax && nohup python3 -m simclr_jax.main --config=$config --workdir=$workdir $* > ~/simclr.log 2>&1 &" ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command 'tail -f ~/simclr.log' ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet ;;
  *) sed -n '2,12p' "$0"; exit 1 ;;
esac
