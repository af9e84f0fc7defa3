"""Models: the official-layout ResNet family, projection/supervised heads and the SimCLR wrapper."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax.models import heads
from simclr_jax.models import resnet
from simclr_jax.models import simclr


def build_encoder(depth: int, width_multiplier: float = 1, sk_ratio: float = 0.0,
                  cifar_stem: bool = False, dtype: Any = jnp.float32,
                  bn_momentum: float = 0.9, conv_impl: str = 'xla') -> resnet.ResNet:
  """The encoder f as a Flax module: apply(variables, images [B,H,W,3], train) -> [B, D] float32."""
  return resnet.ResNet(depth=depth, width_multiplier=width_multiplier, sk_ratio=sk_ratio,
                       cifar_stem=cifar_stem, bn_momentum=bn_momentum, dtype=dtype,
                       conv_impl=conv_impl)


CONV_IMPLS = ('auto', 'xla', 'matmul_grad')


def resolve_conv_impl(config: ml_collections.ConfigDict) -> str:
  """'auto' -> 'matmul_grad' when this process computes on the CPU backend for a CPU run, else
  'xla'. A compile-only plan for TPU/GPU (hardware.chip != 'cpu') keeps the accelerator program."""
  impl = config.model.get('conv_impl', 'xla')  # Runs from before the key used XLA's.
  if impl not in CONV_IMPLS:
    raise ValueError(f'config.model.conv_impl={impl!r}; allowed: {list(CONV_IMPLS)}.')
  if impl != 'auto':
    return impl
  chip = config.get('hardware', {}).get('chip', 'cpu')
  return 'matmul_grad' if jax.default_backend() == 'cpu' and chip == 'cpu' else 'xla'


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> simclr.SimCLR:
  """The SimCLR model from `config.model`; the CIFAR stem is used iff image_size <= 32 (official)."""
  m = config.model
  dtype = simclr.dtype_from_name(m.dtype)
  encoder = build_encoder(m.resnet_depth, m.width_multiplier, m.sk_ratio,
                          cifar_stem=config.data.image_size <= 32, dtype=dtype,
                          bn_momentum=m.batch_norm_decay, conv_impl=resolve_conv_impl(config))
  proj = heads.ProjectionHead(mode=m.proj_head_mode, out_dim=m.proj_out_dim,
                              num_layers=m.num_proj_layers, ft_proj_selector=m.ft_proj_selector,
                              bn_momentum=m.batch_norm_decay, dtype=dtype)
  probe_classes = num_classes if config.train.lineareval_while_pretraining else 0
  return simclr.SimCLR(encoder=encoder, proj_head=proj, num_classes=probe_classes)
