"""Which resnet.Ops the jobs give the encoder: the CPU kernels on XLA:CPU, XLA's own elsewhere."""

import jax
import ml_collections

from simclr_jax.cpu import kernels
from simclr_jax.models import resnet

CONV_IMPLS = ('auto', 'xla', 'matmul_grad')


def resolve_conv_impl(config: ml_collections.ConfigDict, absent: str = 'xla') -> str:
  """'auto' -> 'matmul_grad' when this process computes on the CPU backend for a CPU run, else
  'xla'. A compile-only plan for TPU/GPU (hardware.chip != 'cpu') keeps the accelerator program.
  `absent`: the choice for a config without the key (runs from before it, converted official
  checkpoints): 'xla' where a job resumes such a run, 'auto' where only speed depends on it."""
  impl = config.model.get('conv_impl', absent)
  if impl not in CONV_IMPLS:
    raise ValueError(f'config.model.conv_impl={impl!r}; allowed: {list(CONV_IMPLS)}.')
  if impl != 'auto':
    return impl
  chip = config.get('hardware', {}).get('chip', 'cpu')
  return 'matmul_grad' if jax.default_backend() == 'cpu' and chip == 'cpu' else 'xla'


def model_ops(config: ml_collections.ConfigDict, absent: str = 'xla') -> resnet.Ops:
  """The encoder's resnet.Ops for config.model.conv_impl: the CPU kernels or XLA's own."""
  return (kernels.CPU_OPS if resolve_conv_impl(config, absent) == 'matmul_grad'
          else resnet.XLA_OPS)
