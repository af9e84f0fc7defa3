"""A seconds-long CPU config for tests and smoke runs: a tiny ResNet-10 on the embedded set.

    python -m simclr_jax.main --config=configs/test.py --workdir=/tmp/simclr_test
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'test'
  config.data.image_size = 16
  config.model.width_multiplier = 0.125
  config.model.proj_out_dim = 16
  config.train.batch_size = 32
  config.train.steps = 6
  config.train.log_every_seconds = 0.0
  config.train.checkpoint_every_steps = 3
  config.eval.batch_size = 1008  # Not a divisor of 1000 or 4000: the last batch is padded.
  config.eval.probe_steps = 50
  return config
