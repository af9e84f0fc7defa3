"""python -m simclr_jax.plan --config=CONFIG [--num_devices=N] [--chip=KEY]: see train_plan.py."""

from absl import app

from simclr_jax import cli
from simclr_jax.plan import train_plan

if __name__ == '__main__':
  train_plan.define_flags()
  app.run(train_plan.main, flags_parser=cli.parse_flags)
