"""A plain-PyTorch SimCLR pretraining step: the same network, loss and optimiser as simclr_jax's
`steps.train_step`, to put our step time next to PyTorch's on the same machine.

    python bench/pytorch_reference.py --depth=18 --width=1 --image_size=32 --batch=64 \
        [--dtype=float32|bfloat16] [--steps=5] [--channels_last] [--compile] [--device=cpu|cuda]

prints one JSON line (see `time_step`). No torchvision: its wheel does not import beside the CPU
torch wheel here, so everything is written in plain torch.

What "the same" means, detail by detail (each mirrors simclr_jax/models, losses.py, optim.py):
- ResNet v1 (post-activation). Every conv has no bias; a k x k conv with stride s pads (k-1)//2 on
  both sides (for odd k that equals TF's SAME at stride 1 and `fixed_padding` + VALID at s > 1).
  Depths 10/18/34 use basic blocks, 50+ bottlenecks with the stride on the 3x3. The first block of
  EVERY group has a projection shortcut (1x1 conv + BN), also 64 -> 64 in ResNet-18/34. The last BN
  of every residual block starts with gamma = 0. Widths int(64 * w), int(128 * w), ...
- Stem: images of at most 32 px get the CIFAR stem (3x3 stride-1 conv + BN + ReLU, no max-pool);
  larger ones a 7x7 stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool with TF's SAME padding
  (asymmetric: the extra pad goes after), as ours.
- BN: epsilon 1e-5, decay 0.9 (torch momentum = 1 - decay = 0.1), batch statistics over both views
  of the whole batch (one forward pass). One difference that no step time sees: torch updates the
  running variance with the unbiased batch variance, Flax with the biased one.
- Projection head (`proj_layers` layers): hidden layers Dense (no bias) + BN (centred) + ReLU of the
  encoder's width; the output layer Dense (no bias) to 128 + BN without centre (scale only).
  Dense kernels N(0, 0.01); conv kernels truncated-normal variance scaling (fan_in, scale 1).
- Online probe (`probe_classes` > 0, default 10 as in our default config): Dense(classes) with bias
  on the DETACHED encoder features, both views classified, mean cross-entropy added to the loss
  plus weight_decay * ||W||^2 / 2 (LARS leaves that kernel alone, as the official code does).
- NT-Xent over 2N views: z L2-normalised (x / sqrt(max(sum x^2, 1e-12))), cosine / temperature,
  self-similarity masked by subtracting 1e9, loss = mean over pairs of CE_a + CE_b (the official
  scale). Computed in float32 whatever the model's dtype.
- LARS (optax.lars as simclr_jax.optim builds it, = the official classic-momentum LARS): for conv
  and dense kernels outside the probe, g <- g + wd * w and trust = eta * ||w|| / ||g|| (1 where
  either norm is 0); every other parameter (BN, biases, probe) trust 1 and no decay;
  v <- momentum * v + lr * trust * g; w <- w - v. Momentum 0.9, eta 0.001, no Nesterov.
- Input: a synthetic uint8 batch [B, 2, H, W, 3] already on the device (the input pipeline is
  excluded, as in bench/train_step.py), converted to float [0, 1] inside the step; views of example
  i are rows 2i and 2i + 1.
- bfloat16: autocast (float32 parameters, bf16 compute), as our model.dtype='bfloat16' keeps float32
  parameters; the loss stays float32.

The learning-rate schedule is a constant here (its cost is one scalar per step).
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time
from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F

from reference_common import BLOCKS_PER_GROUP, BN_DECAY, BN_EPSILON, LARGE_NUM, PROJ_OUT_DIM  # pylint: disable=g-import-not-at-top,unused-import


def _f32(x: torch.Tensor) -> torch.Tensor:
  """Half-precision values (bf16 under autocast) to float32; float32/64 pass through."""
  return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def uses_bottleneck(depth: int) -> bool:
  return depth >= 50


def feature_dim(depth: int, width: float) -> int:
  return int(512 * width) * (4 if uses_bottleneck(depth) else 1)


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
  """Conv without bias, symmetric (k-1)//2 padding; kernel init as ours (fan_in truncated normal)."""
  c = nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=False)
  std = math.sqrt(1.0 / (cin * k * k)) / .87962566103423978  # Flax/TF truncated-normal scaling.
  nn.init.trunc_normal_(c.weight, std=std, a=-2 * std, b=2 * std)
  return c


class BatchNorm(nn.Module):
  """BN over the channel axis (dim 1) of 2-D or 4-D input; `center=False` has no bias (beta)."""

  def __init__(self, channels: int, center: bool = True, init_zero: bool = False):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(channels) if init_zero else torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels)) if center else None
    self.register_buffer('running_mean', torch.zeros(channels))
    self.register_buffer('running_var', torch.ones(channels))

  def forward(self, x):
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                        training=self.training, momentum=1.0 - BN_DECAY, eps=BN_EPSILON)


class Shortcut(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv = conv(cin, cout, 1, stride)
    self.bn = BatchNorm(cout)

  def forward(self, x):
    return self.bn(self.conv(x))


class BasicBlock(nn.Module):

  def __init__(self, cin, filters, stride, use_projection):
    super().__init__()
    self.shortcut = Shortcut(cin, filters, stride) if use_projection else None
    self.conv1 = conv(cin, filters, 3, stride)
    self.bn1 = BatchNorm(filters)
    self.conv2 = conv(filters, filters, 3, 1)
    self.bn2 = BatchNorm(filters, init_zero=True)

  def forward(self, x):
    s = x if self.shortcut is None else self.shortcut(x)
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + s)


class Bottleneck(nn.Module):

  def __init__(self, cin, filters, stride, use_projection):
    super().__init__()
    self.shortcut = Shortcut(cin, 4 * filters, stride) if use_projection else None
    self.conv1 = conv(cin, filters, 1)
    self.bn1 = BatchNorm(filters)
    self.conv2 = conv(filters, filters, 3, stride)
    self.bn2 = BatchNorm(filters)
    self.conv3 = conv(filters, 4 * filters, 1)
    self.bn3 = BatchNorm(4 * filters, init_zero=True)

  def forward(self, x):
    s = x if self.shortcut is None else self.shortcut(x)
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + s)


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  total = max((math.ceil(n / s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


class ResNet(nn.Module):
  """Encoder f: images [B, 3, H, W] -> pooled features [B, feature_dim] (float32)."""

  def __init__(self, depth: int, width: float = 1.0, cifar_stem: bool = False):
    super().__init__()
    if depth not in BLOCKS_PER_GROUP:
      raise ValueError(f'depth={depth}; allowed: {sorted(BLOCKS_PER_GROUP)}')
    self.cifar_stem = cifar_stem
    c = int(64 * width)
    self.stem_conv = conv(3, c, 3, 1) if cifar_stem else conv(3, c, 7, 2)
    self.stem_bn = BatchNorm(c)
    bottleneck = uses_bottleneck(depth)
    block = Bottleneck if bottleneck else BasicBlock
    cin = c
    for g, (n, base) in enumerate(zip(BLOCKS_PER_GROUP[depth], (64, 128, 256, 512))):
      filters = int(base * width)
      for b in range(n):
        stride = (1 if g == 0 else 2) if b == 0 else 1
        self.add_module(f'group{g + 1}_block{b}', block(cin, filters, stride, b == 0))
        cin = 4 * filters if bottleneck else filters
    self.blocks = [name for name, _ in self.named_children() if name.startswith('group')]

  def forward(self, x):
    x = F.relu(self.stem_bn(self.stem_conv(x)))
    if not self.cifar_stem:  # 3x3 / 2 max-pool, TF SAME padding (extra pad after).
      (t, b), (l, r) = _same_pads(x.shape[2], 3, 2), _same_pads(x.shape[3], 3, 2)
      x = F.max_pool2d(F.pad(x, (l, r, t, b), value=float('-inf')), 3, 2)
    for name in self.blocks:
      x = getattr(self, name)(x)
    return _f32(x).mean(dim=(2, 3))


class LinearBN(nn.Module):
  """Dense without bias + BN (centred iff `center`), N(0, 0.01) kernel."""

  def __init__(self, cin, cout, center):
    super().__init__()
    self.dense = nn.Linear(cin, cout, bias=False)
    nn.init.normal_(self.dense.weight, std=0.01)
    self.bn = BatchNorm(cout, center=center)

  def forward(self, x):
    return self.bn(self.dense(x))


class SimCLRNet(nn.Module):
  """images [2B, 3, H, W] -> (z [2B, 128], features h [2B, D], probe logits or None)."""

  def __init__(self, depth, width=1.0, cifar_stem=False, proj_layers=3, probe_classes=10):
    super().__init__()
    self.encoder = ResNet(depth, width, cifar_stem)
    d = feature_dim(depth, width)
    self.proj_head = nn.ModuleDict({
        f'nl_{j}': LinearBN(d, PROJ_OUT_DIM if j == proj_layers - 1 else d,
                            center=j != proj_layers - 1) for j in range(proj_layers)})
    self.head_supervised = None
    if probe_classes:
      self.head_supervised = nn.Linear(d, probe_classes)
      nn.init.normal_(self.head_supervised.weight, std=0.01)
      nn.init.zeros_(self.head_supervised.bias)

  def forward(self, x):
    h = self.encoder(x)
    z = h
    n = len(self.proj_head)
    for j in range(n):
      z = self.proj_head[f'nl_{j}'](z)
      if j != n - 1:
        z = F.relu(z)
    logits = None
    if self.head_supervised is not None:
      with torch.autocast(h.device.type, enabled=False):  # The probe runs in float32, as ours.
        logits = self.head_supervised(h.detach())
    return _f32(z), h, logits


def is_adapted(name: str, p: torch.Tensor) -> bool:
  """Conv and dense kernels outside the probe get weight decay and the trust ratio (optim.py)."""
  return p.ndim >= 2 and not name.startswith('head_supervised')


# ---------------------------------------------------------------------------------------------
# Loss and optimiser
# ---------------------------------------------------------------------------------------------

def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
  return x * torch.rsqrt(torch.clamp(torch.sum(x * x, dim=-1, keepdim=True), min=eps))


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float,
            hidden_norm: bool = True) -> torch.Tensor:
  """The official NT-Xent of N pairs: mean over pairs of CE(view 1 anchor) + CE(view 2 anchor)."""
  z_a, z_b = _f32(z_a), _f32(z_b)
  if hidden_norm:
    z_a, z_b = l2_normalize(z_a), l2_normalize(z_b)
  n = z_a.shape[0]
  idx = torch.arange(n, device=z_a.device)
  mask = F.one_hot(idx, n).to(z_a.dtype) * LARGE_NUM
  aa = z_a @ z_a.T / temperature - mask
  bb = z_b @ z_b.T / temperature - mask
  ab = z_a @ z_b.T / temperature
  ba = z_b @ z_a.T / temperature
  loss_a = F.cross_entropy(torch.cat([ab, aa], 1), idx, reduction='none')
  loss_b = F.cross_entropy(torch.cat([ba, bb], 1), idx, reduction='none')
  return torch.mean(loss_a + loss_b)


class LARS(torch.optim.Optimizer):
  """The official classic-momentum LARS (= optax.lars with simclr_jax's masks).

  Param groups carry `adapt`: True for kernels that get weight decay and the trust ratio.
  """

  def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001):
    super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                  adapt=True))
    for group in self.param_groups:  # Buffers up front: a compiled step() is traced only once.
      for p in group['params']:
        self.state[p]['momentum'] = torch.zeros_like(p, memory_format=torch.preserve_format)

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      lr, m, wd, eta = group['lr'], group['momentum'], group['weight_decay'], group['eta']
      for p in group['params']:
        if p.grad is None:
          continue
        g = p.grad
        v = self.state[p]['momentum']
        if group['adapt']:
          if wd:
            g = g + wd * p
          w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
          trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                              torch.ones_like(w_norm))
          v.mul_(m).add_(g * (lr * trust))
        else:
          v.mul_(m).add_(g, alpha=lr)
        p.sub_(v)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
                   eta: float = 0.001) -> LARS:
  adapted, other = [], []
  for name, p in model.named_parameters():
    (adapted if is_adapted(name, p) else other).append(p)
  return LARS([dict(params=adapted, adapt=True), dict(params=other, adapt=False)], lr=lr,
              momentum=momentum, weight_decay=weight_decay, eta=eta)


def build(depth, width, image_size, proj_layers=3, probe_classes=10) -> SimCLRNet:
  return SimCLRNet(depth, width, cifar_stem=image_size <= 32, proj_layers=proj_layers,
                   probe_classes=probe_classes)


def load_flax_variables(model: SimCLRNet, params, batch_stats=None) -> None:
  """Copies simclr_jax.models.build_model's variables (nested dicts of arrays) into `model`.

  Names map one to one: 'encoder/group1_block0/conv1/Conv_0/kernel' (HWIO) ->
  'encoder.group1_block0.conv1.weight' (OIHW), '.../bn1/bn/scale' -> '.../bn1.weight',
  'proj_head/nl_0/bn_relu/bn/scale' -> 'proj_head.nl_0.bn.weight', dense kernels transposed.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  def flat(tree, prefix=()):
    for k, v in tree.items():
      if isinstance(v, dict) or hasattr(v, 'items'):
        yield from flat(v, prefix + (k,))
      else:
        yield prefix + (k,), np.asarray(v)

  def torch_name(path):
    parts = [p for p in path if p != 'Conv_0']
    if len(parts) >= 2 and parts[-2] == 'bn':  # BatchNormRelu(name=X) holds nn.BatchNorm 'bn'.
      del parts[-2]
    parts = ['bn' if p == 'bn_relu' else p for p in parts]
    if parts[0] == 'head_supervised':
      parts = [p for p in parts if p != 'dense']
    leaf = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean',
            'var': 'running_var'}.get(parts[-1], parts[-1])
    return '.'.join(parts[:-1] + [leaf])

  state = model.state_dict()
  seen = set()
  trees = [params] + ([batch_stats] if batch_stats is not None else [])
  for tree in trees:
    for path, value in flat(tree):
      name = torch_name(path)
      if name not in state:
        raise KeyError(f'{"/".join(path)} -> {name}: no such torch tensor')
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      elif value.ndim == 2:
        value = value.T
      if tuple(state[name].shape) != value.shape:
        raise ValueError(f'{name}: torch {tuple(state[name].shape)} vs flax {value.shape}')
      state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
      seen.add(name)
  missing = [n for n, _ in model.named_parameters() if n not in seen]
  if missing:
    raise KeyError(f'torch parameters without a flax value: {missing}')


# ---------------------------------------------------------------------------------------------
# The step and its timing
# ---------------------------------------------------------------------------------------------

def make_step(model: SimCLRNet, opt: LARS, *, temperature: float, weight_decay: float,
              dtype: str, channels_last: bool, compile: bool, device: str,
              compile_backend: str = 'inductor'):
  """Returns step(views uint8 [B, 2, H, W, 3], labels [B]) -> loss (a device tensor)."""
  use_autocast = dtype == 'bfloat16'
  dev_type = torch.device(device).type

  def loss_fn(views, labels):
    b = views.shape[0]
    x = views.reshape((2 * b,) + tuple(views.shape[2:])).permute(0, 3, 1, 2)
    x = x.float() / 255.0  # From NHWC this permute is already channels_last in memory.
    x = x.contiguous(memory_format=torch.channels_last if channels_last else
                     torch.contiguous_format)
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=use_autocast):
      z, _, logits = model(x)
    z = z.float().reshape(b, 2, -1)
    loss = nt_xent(z[:, 0], z[:, 1], temperature)
    if logits is not None:
      loss = loss + F.cross_entropy(logits.float(), labels.repeat_interleave(2))
      loss = loss + weight_decay * 0.5 * torch.sum(model.head_supervised.weight ** 2)
    return loss

  opt_step = opt.step
  if compile:
    loss_fn = torch.compile(loss_fn, backend=compile_backend)
    opt_step = torch.compile(opt.step, backend=compile_backend)

  def step(views, labels):
    loss = loss_fn(views, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt_step()
    return loss.detach()

  return step


def _sync(device: str) -> None:
  if torch.device(device).type == 'cuda':
    torch.cuda.synchronize()


def _quantile(xs, q):
  xs = sorted(xs)
  pos = (len(xs) - 1) * q
  lo, hi = math.floor(pos), math.ceil(pos)
  return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_step(depth: int, width: float, image_size: int, batch: int, dtype: str = 'float32',
              steps: int = 5, channels_last: bool = False, compile: bool = False,
              proj_layers: int = 3, device: str = 'cpu', *, probe_classes: int = 10,
              temperature: float = 0.5, learning_rate: float = 0.3, weight_decay: float = 1e-6,
              warmup_steps: int = 1, seed: int = 0, compile_backend: str = 'inductor') -> dict:
  """Times `steps` training steps of batch `batch` (2 * batch views) after `warmup_steps`.

  Returns a dict: images_per_s (batch / median step), views_per_s, step_s (median), step_s_min,
  step_s_max, step_s_iqr, step_s_all, compile_s (first step, incl. torch.compile when on),
  warmup_s (the other warm-up steps), loss (last), params, peak_memory_bytes (CUDA: max
  allocated; CPU: None) and peak_rss_bytes (CPU: the process's peak resident set), threads.
  """
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'dtype={dtype!r}; allowed: float32, bfloat16')
  torch.manual_seed(seed)
  dev = torch.device(device)
  if dev.type == 'cuda':
    torch.backends.cudnn.benchmark = True  # Fixed shapes: let cuDNN pick its fastest kernels.
  model = build(depth, width, image_size, proj_layers, probe_classes).to(dev)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  model.train()
  opt = make_optimizer(model, learning_rate * batch / 256, weight_decay)
  step = make_step(model, opt, temperature=temperature, weight_decay=weight_decay, dtype=dtype,
                   channels_last=channels_last, compile=compile, device=device,
                   compile_backend=compile_backend)
  gen = torch.Generator().manual_seed(seed)
  views = torch.randint(0, 256, (batch, 2, image_size, image_size, 3), generator=gen,
                        dtype=torch.uint8).to(dev)
  labels = torch.randint(0, max(probe_classes, 1), (batch,), generator=gen).to(dev)
  if dev.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(dev)

  t = time.perf_counter()
  loss = step(views, labels)
  _sync(device)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(max(warmup_steps, 0)):
    loss = step(views, labels)
  _sync(device)
  warmup_s = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    loss = step(views, labels)
    _sync(device)
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  out = {
      'impl': 'pytorch', 'depth': depth, 'width': width, 'image_size': image_size,
      'batch': batch, 'views': 2 * batch, 'dtype': dtype, 'channels_last': channels_last,
      'compile': compile and compile_backend, 'proj_layers': proj_layers, 'probe_classes': probe_classes,
      'device': device, 'steps': steps,
      'images_per_s': batch / med, 'views_per_s': 2 * batch / med,
      'step_s': med, 'step_s_min': min(times), 'step_s_max': max(times),
      'step_s_iqr': _quantile(times, 0.75) - _quantile(times, 0.25),
      'step_s_all': [round(x, 5) for x in times],
      'compile_s': compile_s, 'warmup_s': warmup_s, 'loss': float(loss),
      'params': sum(p.numel() for p in model.parameters()),
      'peak_memory_bytes': (torch.cuda.max_memory_allocated(dev) if dev.type == 'cuda'
                            else None),
      'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      'threads': torch.get_num_threads(), 'torch': torch.__version__,
  }
  if dev.type == 'cuda':
    out['device_name'] = torch.cuda.get_device_name(dev)
  return out


def main(argv: Optional[list[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--depth', type=int, default=18)
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--image_size', type=int, default=32)
  p.add_argument('--batch', type=int, default=64, help='images (pairs); views = 2 * batch')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup_steps', type=int, default=1)
  p.add_argument('--channels_last', action='store_true')
  p.add_argument('--compile', action='store_true', help='torch.compile the loss and optimiser')
  p.add_argument('--compile_backend', default='inductor',
                 help="torch.compile backend ('aot_eager': tracing without code generation)")
  p.add_argument('--proj_layers', type=int, default=3)
  p.add_argument('--probe_classes', type=int, default=10, help='0: no online probe')
  p.add_argument('--device', default='cpu')
  p.add_argument('--threads', type=int, default=0, help='torch.set_num_threads if > 0')
  a = p.parse_args(argv)
  if a.threads > 0:
    torch.set_num_threads(a.threads)
  r = time_step(a.depth, a.width, a.image_size, a.batch, a.dtype, a.steps, a.channels_last,
                a.compile, a.proj_layers, a.device, probe_classes=a.probe_classes,
                warmup_steps=a.warmup_steps, compile_backend=a.compile_backend)
  print(json.dumps(r), flush=True)


if __name__ == '__main__':
  sys.exit(main())
