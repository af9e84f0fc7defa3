"""CIFAR-10 with ResNet-18, the official README's recipe: pretraining is configs/cifar10.py
(B=512, 1000 epochs, LARS 1.0 x B/256, wd 1e-4, tau 0.5, s=0.5, no blur); this config is its
linear evaluation (README: frozen encoder = finetune with fine_tune_after_block=4, zero-initialised
head, Nesterov momentum lr 0.1 x B/256, wd 0, no warmup, B=512, 100 epochs, crop + flip).

    python -m simclr_jax.main --config=configs/cifar10_r18.py:pretrain \
        --config.data.data_dir=$DATA --workdir=$PRE        # = configs/cifar10.py
    python -m simclr_jax.main --config=configs/cifar10_r18.py --config.init_checkpoint=$PRE \
        --config.data.data_dir=$DATA --workdir=$LIN

Expected (official README): about 91% top-1 on the 10,000 test images. Not yet reproduced by us.
Add --config.linear_eval.precompute_features=True for a minutes-long head fit without
augmentation (usually within a point of the augmented protocol).
"""

from configs import cifar10


def linear_eval(config):
  """The README's linear-head recipe on top of any CIFAR-10 pretraining config."""
  config.name = config.name + '_linear_eval'
  config.mode = 'linear_eval'
  config.zero_init_logits_layer = True
  config.linear_eval.precompute_features = False
  config.optim.optimizer = 'momentum'  # Nesterov.
  config.optim.learning_rate = 0.1
  config.optim.learning_rate_scaling = 'linear'
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  config.train.batch_size = 512
  config.train.epochs = 100
  config.train.checkpoint_every_steps = 5000
  return config


def get_config(mode: str = 'linear_eval'):
  config = cifar10.get_config()
  if mode == 'pretrain':
    return config
  if mode != 'linear_eval':
    raise ValueError(f'configs/cifar10_r18.py:{mode}; allowed: pretrain, linear_eval.')
  return linear_eval(config)
