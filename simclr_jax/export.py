"""python -m simclr_jax.export --from=WORKDIR --to=FILE.safetensors [--names=torchvision]
    [--heads] [--step=N]

A workdir's encoder (and heads) as named float32 arrays in a safetensors file plus a JSON
sidecar; the work is simclr_jax/checkpoints/export.py (its docstring gives the names and the
PyTorch adaptation). absl flags: --helpfull and --flagfile work as for simclr_jax.main.
"""

from absl import app
from absl import flags

from simclr_jax import cli

_FROM = flags.DEFINE_string('from', None, 'A simclr_jax workdir or one of its '
                            'checkpoints/<step> directories.', required=True)
_TO = flags.DEFINE_string('to', None, 'FILE.safetensors (FILE.json is written beside it).',
                          required=True)
_NAMES = flags.DEFINE_enum('names', 'simclr_jax', ['simclr_jax', 'torchvision'],
                           'Tensor naming scheme.')
_HEADS = flags.DEFINE_bool('heads', False, 'Also the projection and supervised heads.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {argv[1:]}')
  from simclr_jax.checkpoints import export  # pylint: disable=g-import-not-at-top
  return export.cli(_FROM.value, _TO.value, names=_NAMES.value, heads=_HEADS.value,
                    step=_STEP.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
