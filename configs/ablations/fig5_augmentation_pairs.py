"""Figure 5: linear top-1 under single transformations and their pairs (asymmetric views).

As in the paper, the targeted transformations go to one view only (aug.asymmetric=True); the
other view is the image resized. Seven transformations: crop (random resized crop), cutout,
colour (colour distortion at strength 1.0: jitter + random grey), sobel, noise, rotate (90, 180
or 270 degrees). Run 'a+b' switches on a and b and nothing else; run 'a' is a alone. The paper's
seventh, Gaussian blur, is left out: at the base config's 16 px the official kernel
(image_size // 10, made odd) has one tap, i.e. blur is the identity (aug.use_blur still works at
20 px and above; add 'blur' to TRANSFORMS for a larger image_size).
Our pipeline applies the enabled transformations in one canonical order, so (a, b) and (b, a)
are the same run: the grid runs the upper triangle and its diagonal (21 runs) and the heat map
mirrors it (the paper's Figure 5 is not symmetric: its order is the row's then the column's).

    python -m simclr_jax.sweep --config=configs/ablations/fig5_augmentation_pairs.py \
        --workdir=/tmp/ablations/fig5
"""

import itertools

from configs.ablations import base

TRANSFORMS = ('crop', 'cutout', 'colour', 'sobel', 'noise', 'rotate')
SWITCHES = {'crop': {'aug.crop': True}, 'cutout': {'aug.cutout': True},
            'colour': {'aug.color_jitter_strength': 1.0}, 'sobel': {'aug.sobel': True},
            'noise': {'aug.noise': True}, 'blur': {'aug.use_blur': True},
            'rotate': {'aug.rotate': True}}


def get_config():
  config = base.get_config()
  config.name = 'fig5_augmentation_pairs'
  config.aug.asymmetric = True
  config.aug.flip = False  # Not one of Figure 5's transformations.
  config.aug.crop = False  # Every transformation off; each run switches on its one or two.
  config.aug.color_jitter_strength = 0.0
  config.aug.use_blur = False
  return config


def get_sweep():
  runs = []
  for i, a in enumerate(TRANSFORMS):
    for b in TRANSFORMS[i:]:
      runs.append((a if a == b else f'{a}+{b}', {**SWITCHES[a], **SWITCHES[b]}))
  return runs


FIGURE = {'kind': 'heatmap', 'labels': TRANSFORMS, 'mirror': True,
          'cells': {name: tuple((name.split('+') * 2)[:2]) for name, _ in get_sweep()}}
