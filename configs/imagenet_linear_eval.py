"""ImageNet linear evaluation, the paper's protocol (appendix B.6): frozen ResNet-50 encoder, a
linear head trained with Nesterov momentum 0.9, B=4096, lr 0.1 x B/256 = 1.6 with cosine decay
and no warmup, 90 epochs, no regularisation (wd 0), crop + flip only; top-1/top-5 on all 50,000
validation images.

    python -m simclr_jax.main --config=configs/imagenet.py --workdir=$PRE   # (or a TPU config)
    python -m simclr_jax.main --config=configs/imagenet_linear_eval.py \
        --config.init_checkpoint=$PRE --config.data.data_dir=$DATA --workdir=$LIN

Expected (paper, Table 6 / Fig. 9): 64.5% top-1 after 100 pretraining epochs (R50 1x), 69.3%
after 1000; 74.2% / 76.5% for R50 2x / 4x (1000 epochs). Not yet reproduced by us.
The official code runs this as train_mode=finetune with fine_tune_after_block=4 (same thing).
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'imagenet_linear_eval'
  config.mode = 'linear_eval'
  config.linear_eval.precompute_features = False  # Paper: crop + flip views every epoch.
  config.optim.optimizer = 'momentum'  # Nesterov.
  config.optim.learning_rate = 0.1
  config.optim.learning_rate_scaling = 'linear'
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  config.train.batch_size = 4096
  config.train.epochs = 90
  config.train.checkpoint_every_steps = 5000
  return config
