"""Distil a fine-tuned teacher into a student on all 4,000 embedded training digits (labels
unused): stage 3 of the semi-supervised chain (README, "Semi-supervised: fine-tune and distill").

    python -m simclr_jax.main --config=configs/default.py --workdir=/tmp/simclr_demo
    python -m simclr_jax.main --config=configs/finetune_10pct.py \
        --config.init_checkpoint=/tmp/simclr_demo --workdir=/tmp/simclr_ft10
    python -m simclr_jax.main --config=configs/distill.py \
        --config.distill.teacher_checkpoint=/tmp/simclr_ft10 \
        --config.init_checkpoint=/tmp/simclr_demo --workdir=/tmp/simclr_distill

Self-distillation as in the paper: the student is the teacher's network, initialised from the
same pretraining run (drop --config.init_checkpoint for a random start; set config.model.* then
for another student, e.g. --config.model.width_multiplier=0.125 for a smaller one). The
optimiser is the fine-tuning one (Nesterov momentum, no weight decay), crop only (no flips for
digits). Measured figures (teacher, student, spread over seeds): docs/distillation.md.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'distill'
  config.mode = 'distill'
  config.distill.temperature = 1.0
  config.distill.alpha = 0.0
  config.fine_tune_after_block = -1
  config.optim.optimizer = 'momentum'  # Nesterov.
  config.optim.learning_rate = 0.1  # x B/256.
  config.optim.learning_rate_scaling = 'linear'
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  config.train.batch_size = 256
  config.train.epochs = 10
  config.train.eval_every_epochs = 5.0
  config.train.checkpoint_every_steps = 10_000
  return config
