"""Semi-supervised ImageNet on the official 10% label subset (TFDS imagenet2012_subset/10pct,
128,116 images): as imagenet_finetune_1pct.py (paper appendix B.5) but 30 epochs.

    tfds build imagenet2012_subset --config=10pct --data_dir=$DATA
    python -m simclr_jax.main --config=configs/imagenet_finetune_10pct.py \
        --config.init_checkpoint=$PRE --config.data.data_dir=$DATA --workdir=$FT

Expected (paper, Table 7): top-1 65.6% (top-5 87.8%) for R50 1x; 74.4% for R50 4x. Not yet
reproduced by us.
"""

from configs import imagenet_finetune_1pct


def get_config():
  return imagenet_finetune_1pct.get_config('10pct')
