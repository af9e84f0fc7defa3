"""python -m simclr_jax.convert --from=OFFICIAL_CHECKPOINT --to=NEW_WORKDIR [--ema]
    [--ft_proj_selector=K] [--sk_ratio=R] [--skip=REGEX]

An official SimCLR v1/v2 checkpoint as a simclr_jax workdir; the work is
simclr_jax/checkpoints/convert.py (its docstring says what is read and inferred). absl flags:
--helpfull and --flagfile work as for simclr_jax.main.
"""

from absl import app
from absl import flags

from simclr_jax import cli

_FROM = flags.DEFINE_string('from', None, 'Official checkpoint prefix, its directory or a '
                            'SavedModel directory; local or gs://.', required=True)
_TO = flags.DEFINE_string('to', None, 'The new simclr_jax workdir.', required=True)
_EMA = flags.DEFINE_bool('ema', False, 'TF1 SimCLRv2 checkpoints: take the EMA weights.')
_FT_PROJ_SELECTOR = flags.DEFINE_integer(
    'ft_proj_selector', 0, 'Projection layer the supervised head reads (0: encoder output).')
_SK_RATIO = flags.DEFINE_float('sk_ratio', None, 'The official sk_ratio flag, where the '
                               'checkpoint cannot show it.')
_SKIP = flags.DEFINE_string('skip', None, 'Regex of further checkpoint keys to leave out.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {argv[1:]}')
  from simclr_jax.checkpoints import convert  # pylint: disable=g-import-not-at-top
  return convert.cli(_FROM.value, _TO.value, ema=_EMA.value,
                     ft_proj_selector=_FT_PROJ_SELECTOR.value, sk_ratio=_SK_RATIO.value,
                     skip=_SKIP.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
