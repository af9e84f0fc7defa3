"""The full SimCLR model: encoder f, projection head g, and the online supervised probe."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from simclr_jax.models import heads


class SimCLR(nn.Module):
  """images [B, H, W, 3] float in [0, 1] -> dict of float32 outputs.

  Returns 'features' h [B, D], 'projection' z [B, proj_dim] and, if `num_classes` > 0,
  'sup_logits' [B, num_classes] computed on stop_gradient(hiddens[ft_proj_selector]).
  Both views of a batch go through ONE call, so BatchNorm statistics cover both views of the
  whole global batch (global BN: under jit over a sharded batch, XLA reduces across devices).
  """
  encoder: nn.Module
  proj_head: nn.Module
  num_classes: int = 0

  @nn.compact
  def __call__(self, images, train: bool = False):
    h = self.encoder(images, train=train)
    z, h_sel = self.proj_head(h, train=train)
    out = {'features': h, 'projection': z}
    if self.num_classes:
      out['sup_logits'] = heads.SupervisedHead(self.num_classes, name='head_supervised')(
          heads.probe_input(h_sel))
    return out


def dtype_from_name(name: str) -> Any:
  allowed = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if name not in allowed:
    raise ValueError(f'config.model.dtype={name!r}; allowed: {sorted(allowed)}.')
  return allowed[name]
