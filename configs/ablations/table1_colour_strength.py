"""Table 1: linear top-1 against the strength s of the colour distortion, on top of random crops.

Both views get crop + colour distortion (symmetric, the SimCLR recipe); s in {1/8, 1/4, 1/2, 1}
(the paper's 1 (+Blur) column is left out: at the base config's 16 px the official blur kernel has
one tap, i.e. blur is the identity). s = 0 (crop alone) is added as the
reference the paper's Figure 5 / section 3 discussion rests on: with crops alone, colour
histograms solve the contrastive task (here: every image has its own random colours). The
paper's AutoAugment column is not reproduced.

    python -m simclr_jax.sweep --config=configs/ablations/table1_colour_strength.py \
        --workdir=/tmp/ablations/table1
"""

from configs.ablations import base


def get_config():
  config = base.get_config()
  config.name = 'table1_colour_strength'
  config.aug.crop = True
  config.aug.use_blur = False
  return config


def get_sweep():
  runs = [('crop_only', {'aug.color_jitter_strength': 0.0})]
  for label, s in (('1_8', 0.125), ('1_4', 0.25), ('1_2', 0.5), ('1', 1.0)):
    runs.append((f's={label}', {'aug.color_jitter_strength': s}))
  return runs


FIGURE = {'kind': 'table', 'columns': ['aug.color_jitter_strength', 'aug.use_blur']}
