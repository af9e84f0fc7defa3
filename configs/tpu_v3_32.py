"""ImageNet R50 on a TPU v3-32 slice (32 cores, 4 hosts): the paper's recipe at B=4096 (128 per
core, as on v3-128), 4x longer wall-clock.

Every host runs the same command; launch/tpu_pod.sh starts it on all of them (launch/README.md):
    export TPU_NAME=simclr ZONE=europe-west4-a ACCELERATOR_TYPE=v3-32
    launch/tpu_pod.sh run configs/tpu_v3_32.py gs://BUCKET/simclr/r50_100ep \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Expected: the paper's 64.5% linear-eval top-1 after 100 epochs. Our speed on TPU is not yet
measured.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'tpu_v3_32_r50_100ep'
  config.hardware.chip = 'tpu_v3'
  config.hardware.num_devices = 32
  return config
