"""Fine-tune the default demo's encoder on 10% of the embedded set's labels (400 digits, 40 per
class): stage 2 of the semi-supervised chain (README, "Semi-supervised: fine-tune and distill").

    python -m simclr_jax.main --config=configs/default.py --workdir=/tmp/simclr_demo
    python -m simclr_jax.main --config=configs/finetune_10pct.py \
        --config.init_checkpoint=/tmp/simclr_demo --workdir=/tmp/simclr_ft10

The paper's fine-tuning protocol (appendix B.5: Nesterov momentum, no warmup, no weight decay,
crop + flip only; flips stay off for digits) with the whole network trained; the learning rate
and epochs are sized for 400 examples on a 2-core CPU, not the paper's (0.05 x B/256, 30 epochs
on ImageNet's 10%). Measured figures: docs/distillation.md.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'finetune_10pct'
  config.mode = 'finetune'
  config.data.label_fraction = 0.1
  config.fine_tune_after_block = -1  # Everything trains.
  config.optim.optimizer = 'momentum'  # Nesterov.
  config.optim.learning_rate = 0.1  # x B/256.
  config.optim.learning_rate_scaling = 'linear'
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  config.train.batch_size = 64
  config.train.epochs = 60
  config.train.checkpoint_every_steps = 10_000
  return config
