"""ImageNet R50 on a TPU v3-32 slice (32 cores, 4 hosts): the paper's recipe at B=4096 (128 pairs
per core, against 32 on v3-128), 4x longer wall-clock.

Every host runs the same command; launch/tpu_pod.sh starts it on all of them (launch/README.md):
    export TPU_NAME=simclr ZONE=europe-west4-a ACCELERATOR_TYPE=v3-32
    launch/tpu_pod.sh run configs/tpu_v3_32.py gs://BUCKET/simclr/r50_100ep \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Expected: the paper's 64.5% linear-eval top-1 after 100 epochs. Our speed on TPU is not yet
measured. The plan (`python -m simclr_jax.plan --config=configs/tpu_v3_32.py`, TPU compiler via
`pip install -e '.[tpu]'`) gives 8.88 GiB per core of a v3 core's 16 GiB, and a cost-model step of
193 ms (1.7 h for 100 epochs, ignoring the input pipeline). B 8192 needs 14.35 GiB (10.3%
headroom), 8.05 GiB with --config.model.remat=True.
Evaluation (configs/imagenet.py's cadence, about 3.3% of the run at most) keeps features sharded:
per core 313.5 MiB of train-split features, and at most 352.8 MiB for any evaluation function
(the probe's training; 390.1 MiB for a kNN over the whole train split), by the same plan.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'tpu_v3_32_r50_100ep'
  config.hardware.chip = 'tpu_v3'
  config.hardware.num_devices = 32
  return config
