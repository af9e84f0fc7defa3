"""The paper's ImageNet run on a TPU v3-128 pod slice (128 cores, 16 hosts): B=4096, 100 epochs.

Every host runs the same command (see launch/README.md):
    python -m simclr_jax.main --config=configs/tpu_v3_128.py \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets --workdir=gs://BUCKET/simclr/r50_100ep

Paper: ~1.5 h for 100 epochs at ~185 images/s per core. Our speed on TPU is not yet measured.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'tpu_v3_128_r50_100ep'
  return config
