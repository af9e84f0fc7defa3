"""Models: the official-layout ResNet family, projection/supervised heads and the SimCLR wrapper.

Backend-neutral: nothing here knows which device runs it (how convolutions are computed comes in
as resnet.Ops from the caller).
"""

from typing import Any

import jax.numpy as jnp
import ml_collections

from simclr_jax.models import heads
from simclr_jax.models import resnet
from simclr_jax.models import simclr


def build_encoder(depth: int, width_multiplier: float = 1, sk_ratio: float = 0.0,
                  cifar_stem: bool = False, dtype: Any = jnp.float32,
                  bn_momentum: float = 0.9, ops: resnet.Ops = resnet.XLA_OPS,
                  remat: bool = False) -> resnet.ResNet:
  """The encoder f as a Flax module: apply(variables, images [B,H,W,3], train) -> [B, D] float32.
  `ops`: how convolutions are computed (resnet.Ops; the caller chooses, e.g. cpu.model_ops);
  `remat`: recompute residual blocks in the backward pass (resnet.ResNet.remat)."""
  return resnet.ResNet(depth=depth, width_multiplier=width_multiplier, sk_ratio=sk_ratio,
                       cifar_stem=cifar_stem, bn_momentum=bn_momentum, dtype=dtype, ops=ops,
                       remat=remat)


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                ops: resnet.Ops = resnet.XLA_OPS) -> simclr.SimCLR:
  """The SimCLR model from `config.model`; the CIFAR stem is used iff image_size <= 32 (official).
  `ops`: as build_encoder's (the jobs pass cpu.model_ops(config))."""
  m = config.model
  dtype = simclr.dtype_from_name(m.dtype)
  encoder = build_encoder(m.resnet_depth, m.width_multiplier, m.sk_ratio,
                          cifar_stem=config.data.image_size <= 32, dtype=dtype,
                          bn_momentum=m.batch_norm_decay, ops=ops, remat=m.get('remat', False))
  proj = heads.ProjectionHead(mode=m.proj_head_mode, out_dim=m.proj_out_dim,
                              num_layers=m.num_proj_layers, ft_proj_selector=m.ft_proj_selector,
                              bn_momentum=m.batch_norm_decay, dtype=dtype)
  probe_classes = num_classes if config.train.lineareval_while_pretraining else 0
  return simclr.SimCLR(encoder=encoder, proj_head=proj, num_classes=probe_classes)
