"""CIFAR-10 pretraining, the official README's recipe (google-research/simclr): ResNet-18, B=512,
1000 epochs, LARS lr 1.0 (linear scaling), wd 1e-4, tau 0.5, s=0.5, no blur, CIFAR stem.

Prepare the data once (needs internet on that machine), then train:
    tfds build cifar10 --data_dir=$DATA
    python -m simclr_jax.main --config=configs/cifar10.py --config.data.data_dir=$DATA --workdir=$WD

Expected (official README): ~91% linear-eval top-1 after 1000 epochs with a linear head trained
separately; the online probe here tracks it. Not yet reproduced by us (see README).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'cifar10_r18'
  config.data.dataset = 'cifar10'
  config.data.image_size = 32
  config.data.shuffle_buffer = 50_000
  config.aug.crop_area_min = 0.08
  config.aug.flip = True
  config.aug.color_jitter_strength = 0.5
  config.aug.use_blur = False
  config.model.resnet_depth = 18
  config.model.width_multiplier = 1.0
  config.model.num_proj_layers = 3  # Official code default.
  config.loss.temperature = 0.5
  config.optim.learning_rate = 1.0
  config.optim.learning_rate_scaling = 'linear'
  config.optim.warmup_epochs = 10.0
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 512
  config.train.epochs = 1000
  config.train.checkpoint_every_steps = 1000
  config.train.log_every_seconds = 30.0
  config.eval.batch_size = 1024
  config.eval.baselines = False
  return config
