"""Analytic FLOPs of a SimCLR training step, from layer shapes rather than from a compiler.

The compiler's count (`compiled.cost_analysis()`) is one number with no story; this one says
where the FLOPs go, so the two can check each other. Conventions:
- A layer's multiply-adds (MACs) per example: conv kh*kw*(cin/groups)*cout*oh*ow, dense in*out.
  Padded taps count, as in torchvision's and fvcore's tables (`valid_only=True` counts only taps
  that land on the input, which is what XLA's cost analysis counts).
- 1 MAC = 2 FLOPs. Training = forward + weight gradient + input gradient = 3x forward, except
  that no input gradient exists for layers whose input carries none: the first conv (its input is
  the image) and the online probe (its input is stop_gradient'ed).
- NT-Xent: the 2N x 2N similarity matrix of 2N views of dimension d is 4 N x N blocks,
  (2N)^2 * d MACs forward and twice that backward: 3 * 2 * (2N)^2 * d = 24 N^2 d FLOPs per step,
  split evenly over the devices (each computes [2N/D, 2N] rows).
BatchNorm, activations, the loss's softmax and the optimiser are not counted (they are O(size of
the activations or parameters), not O(MACs)).
"""

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FLOPS_PER_MAC = 2
NO_INPUT_GRAD_SCOPES = ('head_supervised',)  # Modules fed with stop_gradient (the online probe).


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv or dense call: `macs` per example; `input_grad` False if backprop stops there."""
  name: str
  kind: str
  macs: int
  input_grad: bool


def _valid_taps(size: int, out: int, kernel: int, stride: int, pad_lo: int, dilation: int) -> int:
  """Kernel taps, summed over output positions, that land inside the input along one axis."""
  o = np.arange(out)[:, None] * stride - pad_lo + np.arange(kernel)[None, :] * dilation
  return int(np.sum((o >= 0) & (o < size)))


def _conv_macs(module: nn.Conv, x, y, valid_only: bool) -> int:
  spatial_in, spatial_out = x.shape[1:-1], y.shape[1:-1]
  ks = tuple(module.kernel_size)
  strides = module.strides or 1
  strides = (strides,) * len(ks) if isinstance(strides, int) else tuple(strides)
  dil = module.kernel_dilation or 1
  dil = (dil,) * len(ks) if isinstance(dil, int) else tuple(dil)
  per_out = x.shape[-1] // module.feature_group_count * y.shape[-1]
  if not valid_only:
    return int(np.prod(ks) * np.prod(spatial_out) * per_out)
  pad = module.padding
  if isinstance(pad, str):
    pad = jax.lax.padtype_to_pads(spatial_in, tuple((k - 1) * d + 1 for k, d in zip(ks, dil)),
                                  strides, pad)
  taps = 1
  for n, m, k, s, (lo, _), d in zip(spatial_in, spatial_out, ks, strides, pad, dil):
    taps *= _valid_taps(n, m, k, s, lo, d)
  return int(taps * per_out)


def layers(model: nn.Module, image_shape: Sequence[int], valid_only: bool = False) -> list[Layer]:
  """Every nn.Conv / nn.Dense call of `model` on one image [H, W, C], in call order.

  Shapes only: the model is traced with jax.eval_shape, nothing is computed.
  """
  found = []

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name != '__call__' or not isinstance(m, (nn.Conv, nn.Dense)):
      return y
    x = args[0]
    if isinstance(m, nn.Conv):
      kind, macs = 'conv', _conv_macs(m, x, y, valid_only)
    else:
      kind, macs = 'dense', int(np.prod(x.shape[1:])) * int(y.shape[-1])
    path = '/'.join(str(p) for p in m.path)
    # The first conv sees the images, which need no gradient.
    input_grad = bool(found) and not any(s in m.path for s in NO_INPUT_GRAD_SCOPES)
    found.append(Layer(path, kind, macs, input_grad))
    return y

  def init():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)), train=False)

  jax.eval_shape(init)
  return found


def forward_macs(found: Sequence[Layer]) -> int:
  """Multiply-adds of one forward pass of one image."""
  return sum(layer.macs for layer in found)


def train_flops_per_view(found: Sequence[Layer]) -> int:
  """FLOPs of forward + backward for one image (one view)."""
  fwd = forward_macs(found)
  input_grads = sum(layer.macs for layer in found if layer.input_grad)
  return FLOPS_PER_MAC * (2 * fwd + input_grads)


def nt_xent_flops(global_batch: int, dim: int) -> int:
  """Forward + backward FLOPs of the loss's similarity matmuls for N = global_batch pairs."""
  return 3 * FLOPS_PER_MAC * (2 * global_batch) ** 2 * dim


def step_flops(found: Sequence[Layer], global_batch: int, proj_dim: int) -> dict[str, int]:
  """Global FLOPs of one SimCLR training step: 2 views of each of `global_batch` examples."""
  model = 2 * global_batch * train_flops_per_view(found)
  loss = nt_xent_flops(global_batch, proj_dim)
  return {'model': model, 'loss': loss, 'total': model + loss}


def supervised_step_flops(found: Sequence[Layer], global_batch: int,
                          trained: Callable[[str], bool], teacher_macs: int = 0
                          ) -> dict[str, int]:
  """Global FLOPs of one linear-evaluation / fine-tuning / distillation step (one view per
  example): every layer runs forward; a trained layer adds its weight gradient, and its input
  gradient unless it is the first trained layer (frozen layers before it take no gradient:
  stop_gradient). Distillation adds the frozen teacher's forward pass, teacher_macs per image."""
  macs, seen = 0, False
  for layer in found:
    t = trained(layer.name)
    macs += layer.macs * (1 + t + (t and seen))
    seen = seen or t
  model = FLOPS_PER_MAC * global_batch * (macs + teacher_macs)
  return {'model': model, 'loss': 0, 'total': model}
