"""The supervised model of linear evaluation and fine-tuning: a pretrained encoder, the kept
prefix of its projection head, and a fresh linear head (models/heads.SupervisedHead).

As the official code (tf2/model.py): `linear` runs the encoder and projection prefix in
inference mode under stop_gradient; otherwise they train, with the encoder's
fine_tune_after_block deciding which groups stay frozen (trainable_labels).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import models
from simclr_jax import sharding
from simclr_jax.models import heads
from simclr_jax.models import resnet
from simclr_jax.models import simclr


class Classifier(nn.Module):
  """images [B,H,W,3] float in [0,1] -> {'head_input': [B, D], 'logits': [B, num_classes]}.

  `linear`: encoder and projection prefix in inference mode under stop_gradient.
  """
  encoder: nn.Module
  proj_head: nn.Module
  num_classes: int
  zero_init: bool = False
  linear: bool = True

  @nn.compact
  def __call__(self, images, train: bool = False):
    body_train = train and not self.linear
    x, _ = self.proj_head(self.encoder(images, train=body_train), train=body_train)
    if self.linear:
      x = jax.lax.stop_gradient(x)
    logits = heads.SupervisedHead(self.num_classes, self.zero_init, name='head_supervised')(x)
    return {'head_input': x, 'logits': logits}


def num_proj_hiddens(model_cfg: ml_collections.ConfigDict) -> int:
  return {'none': 1, 'linear': 2, 'nonlinear': model_cfg.num_proj_layers + 1}[
      model_cfg.proj_head_mode]


def build_classifier(config: ml_collections.ConfigDict, num_classes: int,
                     ops: resnet.Ops = resnet.XLA_OPS) -> Classifier:
  """The Classifier for config.mode from config.model (already merged with the pretraining
  run's); `ops`: the convolution implementation (cpu/ops.model_ops picks it per backend)."""
  m = config.model
  dtype = simclr.dtype_from_name(m.dtype)
  linear = config.mode == 'linear_eval'
  encoder = models.build_encoder(m.resnet_depth, m.width_multiplier, m.sk_ratio,
                                 cifar_stem=config.data.image_size <= 32, dtype=dtype,
                                 bn_momentum=m.batch_norm_decay, ops=ops,
                                 remat=m.get('remat', False))
  if not linear:
    encoder = encoder.clone(fine_tune_after_block=config.fine_tune_after_block)
  keep = m.ft_proj_selector % num_proj_hiddens(m)
  proj = heads.ProjectionHead(mode=m.proj_head_mode, out_dim=m.proj_out_dim,
                              num_layers=m.num_proj_layers, bn_momentum=m.batch_norm_decay,
                              dtype=dtype, keep_layers=keep)  # Its z is hiddens[keep].
  return Classifier(encoder, proj, num_classes, config.zero_init_logits_layer, linear)


def init_variables(model: Classifier, pretrained: dict[str, Any], config, mesh
                   ) -> dict[str, Any]:
  """Classifier variables: the pretrained encoder/projection layers plus a fresh head."""
  size = config.data.image_size
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  head_in = shapes['params']['head_supervised']['dense']['kernel'].shape[0]
  head = heads.SupervisedHead(model.num_classes, model.zero_init)
  head_params = jax.device_put(
      head.init(jax.random.key(config.seed), jnp.zeros((1, head_in)))['params'],
      sharding.replicated(mesh))

  def take(collection):
    target = shapes.get(collection, {})
    out = {}
    for name, sub in target.items():
      if name == 'head_supervised':
        out[name] = head_params
      elif name == 'encoder':
        out[name] = pretrained[collection]['encoder']
      else:  # proj_head: only the kept layers.
        out[name] = {k: pretrained[collection][name][k] for k in sub}
    got = jax.tree.map(lambda x: (x.shape, x.dtype), out)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), dict(target))
    if got != want:
      raise ValueError(f'The checkpoint\'s {collection} do not fit the rebuilt model; was it '
                       'written by a different simclr_jax version?')
    return out

  return {'params': take('params'), 'batch_stats': take('batch_stats')}


def trainable_labels(params, config: ml_collections.ConfigDict) -> Any:
  """'train' / 'frozen' per leaf: linear_eval trains the head only; finetune freezes the stem and
  groups 1..fine_tune_after_block."""
  k = config.fine_tune_after_block

  def label(path, _):
    names = [str(getattr(p, 'key', p)) for p in path]
    if names[0] == 'head_supervised':
      return 'train'
    if config.mode == 'linear_eval':
      return 'frozen'
    if names[0] == 'encoder':
      part = names[1]
      group = int(part[len('group')]) if part.startswith('group') else 0  # 0: the stem.
      return 'frozen' if group <= k else 'train'
    return 'train'  # The kept projection layers are fine-tuned.

  return jax.tree_util.tree_map_with_path(label, params)
