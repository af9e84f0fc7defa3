"""ImageNet R50 on a TPU v3-32 slice (32 cores, 4 hosts): the paper's recipe at B=4096 (128 per
core, as on v3-128), 4x longer wall-clock. Launch as in launch/README.md.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'tpu_v3_32_r50_100ep'
  return config
