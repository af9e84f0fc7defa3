"""The projection head g and the supervised (linear) head, laid out as in the official code.

Official layer conventions: Dense kernels are initialised N(0, 0.01); a Dense followed by BN has no
bias (BN carries the offset); hidden layers keep the BN centre and use ReLU; the output layer's BN
has no centre. The official TF2 code crashes for proj_head_mode 'linear' and 'none' (docs/method.md);
here they do what the flag promises.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models import resnet

PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
dense_kernel_init = nn.initializers.normal(stddev=0.01)


class LinearLayer(nn.Module):
  """Dense (+ BN). With BN the Dense has no bias, and BN is centred iff `use_bias`."""
  features: int
  use_bias: bool
  use_bn: bool
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.features, use_bias=self.use_bias and not self.use_bn, dtype=self.dtype,
                 kernel_init=dense_kernel_init, name='dense')(x)
    if self.use_bn:
      x = resnet.BatchNormRelu(relu=False, center=self.use_bias, momentum=self.bn_momentum,
                               dtype=self.dtype, name='bn_relu')(x, train)
    return x


class ProjectionHead(nn.Module):
  """g: returns (z for the contrastive loss, hiddens[ft_proj_selector] for the supervised head).

  hiddens[0] is the encoder output h; each layer appends its output. 'nonlinear' with L layers:
  L-1 hidden layers of width dim(h) (Dense, BN, ReLU) and an output layer (Dense, BN without
  centre) of `out_dim`. 'linear' is that output layer alone; 'none' is the identity.
  `keep_layers` builds only the first k layers (fine-tuning drops those past ft_proj_selector,
  which feed nothing); parameter names do not change.
  """
  mode: str = 'nonlinear'
  out_dim: int = 128
  num_layers: int = 3
  ft_proj_selector: int = 0
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  keep_layers: Optional[int] = None

  @nn.compact
  def __call__(self, h, train: bool):
    hiddens = [h]
    keep = self.num_layers if self.keep_layers is None else self.keep_layers
    if self.mode == 'linear' and keep > 0:
      hiddens.append(LinearLayer(self.out_dim, False, True, self.bn_momentum, self.dtype,
                                 name='linear')(h, train))
    elif self.mode == 'nonlinear':
      for j in range(min(keep, self.num_layers)):
        last = j == self.num_layers - 1
        x = LinearLayer(self.out_dim if last else h.shape[-1], use_bias=not last, use_bn=True,
                        bn_momentum=self.bn_momentum, dtype=self.dtype,
                        name=f'nl_{j}')(hiddens[-1], train)
        hiddens.append(x if last else nn.relu(x))
    elif self.mode != 'none':
      raise ValueError(f'proj_head_mode={self.mode!r}; allowed: {PROJ_HEAD_MODES}.')
    z = hiddens[-1].astype(jnp.float32)
    return z, hiddens[self.ft_proj_selector].astype(jnp.float32)


class SupervisedHead(nn.Module):
  """Linear classifier: Dense(num_classes) with N(0, 0.01) kernel and zero bias, in float32."""
  num_classes: int
  zero_init: bool = False

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.zero_init else dense_kernel_init
    return nn.Dense(self.num_classes, kernel_init=init, name='dense')(x.astype(jnp.float32))


def probe_input(x: jax.Array) -> jax.Array:
  """The online probe sees features but never sends gradients back into the encoder or g."""
  return jax.lax.stop_gradient(x)
