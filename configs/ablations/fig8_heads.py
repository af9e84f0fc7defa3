"""Figure 8: linear top-1 of the encoder output h for projection heads none / linear / nonlinear
and output dimensions 32, 128, 512 of z (the paper: 32 to 2048).

'none' has no projection, so its output dimension is the encoder's: it is run once and drawn in
every group, as in the paper. The probe always reads h (model.ft_proj_selector = 0).

    python -m simclr_jax.sweep --config=configs/ablations/fig8_heads.py \
        --workdir=/tmp/ablations/fig8
"""

from configs.ablations import base

DIMS = (32, 128, 512)


def get_config():
  config = base.get_config()
  config.name = 'fig8_heads'
  return config


def get_sweep():
  runs = [('none', {'model.proj_head_mode': 'none'})]
  for mode in ('linear', 'nonlinear'):
    runs += [(f'{mode}_{d}', {'model.proj_head_mode': mode, 'model.proj_out_dim': d})
             for d in DIMS]
  return runs


FIGURE = {'kind': 'bars', 'x': 'model.proj_out_dim', 'series': 'model.proj_head_mode'}
