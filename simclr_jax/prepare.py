"""python -m simclr_jax.prepare --images=DIR --out=DATA_DIR [--name=NAME] [--image_size=S]
    [--max_side=M] [--num_processes=P] [--num_shards=K] [--workers=W] [--overwrite]

Packs a folder of images (DIR/<split>/<class>/*.jpg labelled, DIR/<split>/*.jpg unlabelled; see
simclr_jax/data/folder.py) into a TFDS data set in DATA_DIR/NAME/1.0.0: sharded TFRecord files,
TFDS metadata and skipped_files.tsv (every file left out, with its reason). Train on it with
--config.data.dataset=NAME --config.data.data_dir=DATA_DIR. The work is
simclr_jax/data/packing.py. absl flags: --helpfull and --flagfile work as for simclr_jax.main.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TF is imported anywhere.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_IMAGES = flags.DEFINE_string('images', None, 'The image folder, local or gs://.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The TFDS data_dir to write into (local or gs://).',
                           required=True)
_NAME = flags.DEFINE_string('name', None, 'The data set\'s TFDS name (default: the folder\'s '
                            'name in snake_case).')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', 0, 'The crop side you will train at: images whose shorter side is below it '
    'are skipped (the crop would upscale them). 0 keeps every image that decodes.')
_MAX_SIDE = flags.DEFINE_integer('max_side', 0, 'Downscale images whose longer side is larger '
                                 'to this many pixels (0: keep their size).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 1, 'Processes (hosts) that will read the set with data.cache=False: every '
    'split gets a multiple of this many shards, so each reads its own files.')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 0, 'Files per split (0: a multiple of '
                                   '--num_processes, at most 5000 images each).')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Decoding processes (0: one per CPU core).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing DATA_DIR/NAME/1.0.0 '
                               '(the old one stays readable until the new one is complete).')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {argv[1:]}')
  from simclr_jax.data import errors  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import packing  # pylint: disable=g-import-not-at-top
  try:
    packing.prepare(_IMAGES.value, _OUT.value, _NAME.value, image_size=_IMAGE_SIZE.value,
                    max_side=_MAX_SIDE.value, num_processes=_NUM_PROCESSES.value,
                    num_shards=_NUM_SHARDS.value, workers=_WORKERS.value,
                    overwrite=_OVERWRITE.value, say=lambda m: print(m, flush=True))
  except errors.DataConfigError as e:
    cli.fail(str(e))
  except KeyboardInterrupt:
    print('Interrupted: nothing was written (the temporary files are removed).', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
