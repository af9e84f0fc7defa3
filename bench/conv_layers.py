"""Every convolution of the model timed alone: simclr_jax's against PyTorch's (oneDNN).

    python bench/conv_layers.py                      # ResNet-18 32 px, 128 views, 2 rounds
    python bench/conv_layers.py --depth 50 --image_size 64 --batch 32 --rounds 1

Why: `train_step.py --sections=reference` says how far apart whole steps are; this says where.
The convolutions are recorded from the model itself (an abstract trace of `models.build_model`,
so the list, shapes, strides and padding are the real ones) and each distinct one is timed
alone, forward, input gradient (dX) and weight gradient (dW), as jitted JAX functions through the
convolution the model uses on this backend (`model.conv_impl`, 'auto': `kernels.conv` on CPU)
and as PyTorch's aten convolution / convolution_backward on channels_last tensors (the layout
PyTorch's CPU convolutions are fastest in). Rows alternate ours / PyTorch within each round;
totals weight each row by how often the model has it. The first layer's dX is not computed (a
training step does not differentiate the images). Both sides' results are compared on the
first round (`err`: max |ours - PyTorch| / max |PyTorch|), so the two time the same function.
Times include each call's output allocation, as inside a step; they do not include layout
changes a step may add around a convolution (for JAX, those inside the jitted function are in).
"""

import argparse
import collections
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Layer = collections.namedtuple('Layer', 'x_shape w_shape strides padding is_input count')
PARTS = ('fwd', 'dx', 'dw')


def record_layers(depth: int, image_size: int, views: int, width: float = 1.0) -> list:
  """The model's convolutions in order of first use, identical ones merged (with a count)."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  from simclr_jax.cpu import ops as cpu_ops  # pylint: disable=g-import-not-at-top
  from simclr_jax.cpu import kernels  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.resnet_depth, c.model.width_multiplier = depth, width
  c.data.image_size, c.model.conv_impl = image_size, 'matmul_grad'  # Routes every conv here.
  model = models.build_model(c, 10, ops=cpu_ops.model_ops(c))
  images = jax.ShapeDtypeStruct((views, image_size, image_size, 3), jnp.float32)
  seen = collections.OrderedDict()
  real = kernels.conv

  def recording(x, w, strides, padding):
    key = (tuple(x.shape), tuple(w.shape), tuple(strides), tuple(padding),
           tuple(x.shape) == images.shape)
    seen[key] = seen.get(key, 0) + 1
    return real(x, w, strides, padding)

  kernels.conv = recording
  try:
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=True), images)
  finally:
    kernels.conv = real
  return [Layer(*k, count=n) for k, n in seen.items()]


def flops(layer: Layer) -> float:
  """Multiply-adds x 2 of one pass (forward, dX and dW each cost the same)."""
  n, _, _, cin = layer.x_shape
  kh, kw, _, cout = layer.w_shape
  ho, wo = _out_hw(layer)
  return 2.0 * n * ho * wo * kh * kw * cin * cout


def _out_hw(layer: Layer):
  from simclr_jax.cpu import kernels  # pylint: disable=g-import-not-at-top
  return kernels._out_hw(layer.x_shape, layer.w_shape, layer.strides, layer.padding)  # pylint: disable=protected-access


def _median_ms(fn, repeats: int) -> float:
  fn()  # Warm-up (compilation, first allocation).
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def jax_fns(layer: Layer, conv_impl: str, rng):
  """{part: (thunk that runs it to completion, its result as NumPy)} for our convolution."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from simclr_jax.cpu import kernels  # pylint: disable=g-import-not-at-top
  if conv_impl == 'matmul_grad':
    conv = lambda x, w: kernels.conv(x, w, layer.strides, layer.padding)
  else:
    conv = lambda x, w: lax.conv_general_dilated(x, w, layer.strides, layer.padding,
                                                 dimension_numbers=kernels.NHWC)
  x, w, g = _arrays(layer, rng)
  x, w, g = jax.device_put(x), jax.device_put(w), jax.device_put(g)
  fns = {'fwd': (jax.jit(conv), (x, w)),
         'dx': (jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0]), (x, w, g)),
         'dw': (jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1]), (x, w, g))}
  return {p: (lambda f=f, a=a: jax.block_until_ready(f(*a)), lambda f=f, a=a: f(*a))
          for p, (f, a) in fns.items() if p != 'dx' or not layer.is_input}


def torch_fns(layer: Layer, rng):
  """The same three parts in PyTorch, channels_last; results returned in our layouts."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  x, w, g = (torch.from_numpy(a) for a in _arrays(layer, rng))
  (pt, pb), (pl, pr) = layer.padding
  symmetric = pt == pb and pl == pr
  if not symmetric:  # aten's convolution pads symmetrically: pad explicitly first.
    x = F.pad(x, (0, 0, pl, pr, pt, pb))
  xt = x.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last.
  wt = w.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  gt = g.permute(0, 3, 1, 2)
  pad = [pt, pl] if symmetric else [0, 0]
  back = torch.ops.aten.convolution_backward

  def run(part):
    with torch.no_grad():
      if part == 'fwd':
        return F.conv2d(xt, wt, stride=list(layer.strides), padding=pad).permute(0, 2, 3, 1)
      dx, dw, _ = back(gt, xt, wt, None, list(layer.strides), pad, [1, 1], False, [0, 0], 1,
                       [part == 'dx', part == 'dw', False])
      if part == 'dw':
        return dw.permute(2, 3, 1, 0)
      dx = dx.permute(0, 2, 3, 1)
      return dx if symmetric else dx[:, pt:dx.shape[1] - pb, pl:dx.shape[2] - pr]

  return {p: (lambda p=p: run(p), lambda p=p: run(p).numpy())
          for p in PARTS if p != 'dx' or not layer.is_input}


def _arrays(layer: Layer, rng):
  import numpy as np  # pylint: disable=g-import-not-at-top
  ho, wo = _out_hw(layer)
  x = rng.standard_normal(layer.x_shape).astype(np.float32)
  w = (rng.standard_normal(layer.w_shape) / np.sqrt(np.prod(layer.w_shape[:3]))).astype(np.float32)
  g = rng.standard_normal((layer.x_shape[0], ho, wo, layer.w_shape[3])).astype(np.float32)
  return x, w, g


def _rel_err(a, b) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def run(args) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from configs import default  # pylint: disable=g-import-not-at-top
  from simclr_jax.cpu import ops as cpu_ops  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads or os.cpu_count())
  except ImportError:
    torch = None
    print('PyTorch is not installed: timing ours only (pip install torch==2.13.0 to compare).')
  c = default.get_config()
  c.model.conv_impl = args.conv_impl
  impl = cpu_ops.resolve_conv_impl(c)
  layers = record_layers(args.depth, args.image_size, 2 * args.batch, args.width)
  times = {side: [collections.defaultdict(list) for _ in layers] for side in ('ours', 'torch')}
  errs = [{} for _ in layers]
  for rnd in range(args.rounds):
    for i, layer in enumerate(layers):
      ours = jax_fns(layer, impl, np.random.default_rng(i))
      theirs = torch_fns(layer, np.random.default_rng(i)) if torch else {}
      for part in ours:
        times['ours'][i][part].append(_median_ms(ours[part][0], args.repeats))
        if part in theirs:
          times['torch'][i][part].append(_median_ms(theirs[part][0], args.repeats))
          if rnd == 0:
            errs[i][part] = _rel_err(ours[part][1](), theirs[part][1]())
  rows = []
  for i, layer in enumerate(layers):
    row = {'layer': _name(layer), 'count': layer.count, 'gflop': flops(layer) / 1e9,
           'max_rel_err': max(errs[i].values()) if errs[i] else None}
    for side in ('ours', 'torch'):
      for part, ts in times[side][i].items():
        row[f'{side}_{part}_ms'] = statistics.median(ts)
    rows.append(row)
  return {'depth': args.depth, 'image_size': args.image_size, 'views': 2 * args.batch,
          'conv_impl': impl, 'rounds': args.rounds, 'repeats': args.repeats,
          'torch': torch.__version__ if torch else None,
          'load_average': os.getloadavg()[0], 'rows': rows}


def _name(layer: Layer) -> str:
  kh, kw, cin, cout = layer.w_shape
  return (f'{kh}x{kw} {cin}->{cout} {layer.x_shape[1]}px s{layer.strides[0]}'
          + (' (input)' if layer.is_input else ''))


def print_table(r: dict) -> None:
  has_torch = r['torch'] is not None
  print(f"\nResNet-{r['depth']} {r['image_size']} px, {r['views']} views, conv_impl="
        f"{r['conv_impl']}, medians of {r['rounds']} round(s) x {r['repeats']} calls, ms per "
        f"call; load average {r['load_average']:.1f}" + (f"; PyTorch {r['torch']} channels_last"
                                                          if has_torch else ''))
  head = '| layer | count | ' + ' | '.join(f'ours {p}' for p in PARTS)
  if has_torch:
    head += ' | ' + ' | '.join(f'PyTorch {p}' for p in PARTS) + ' | max rel. err'
  print(head + ' |')
  print('|' + '---|' * head.count('|'))
  total = collections.Counter()
  for row in r['rows']:
    cells = [row['layer'], str(row['count'])]
    for side in ('ours', 'torch') if has_torch else ('ours',):
      for p in PARTS:
        v = row.get(f'{side}_{p}_ms')
        cells.append('-' if v is None else f'{v:.1f}')
        if v is not None:
          total[(side, p)] += row['count'] * v
          total[(side, p, 'gflop')] += row['count'] * row['gflop']
    if has_torch:
      cells.append(f"{row['max_rel_err']:.1e}")
    print('| ' + ' | '.join(cells) + ' |')
  for side in ('ours', 'torch') if has_torch else ('ours',):
    ms = [total[(side, p)] for p in PARTS]
    rates = [total[(side, p, 'gflop')] / total[(side, p)] * 1e3 if total[(side, p)] else 0
             for p in PARTS]
    print(f"{'simclr_jax' if side == 'ours' else 'PyTorch'} totals (x count): "
          + ', '.join(f'{p} {m:.0f} ms ({g:.0f} GFLOP/s)' for p, m, g in zip(PARTS, ms, rates))
          + f'; all {sum(ms):.0f} ms')
  if has_torch:
    print('ours / PyTorch time: ' + ', '.join(
        f"{p} {total[('ours', p)] / total[('torch', p)]:.2f}" for p in PARTS) + ', all '
        f"{sum(total[('ours', p)] for p in PARTS) / sum(total[('torch', p)] for p in PARTS):.2f}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--depth', type=int, default=18)
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--image_size', type=int, default=32)
  p.add_argument('--batch', type=int, default=64, help='images (pairs); views = 2 * batch')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--repeats', type=int, default=5, help='timed calls per part and round')
  p.add_argument('--conv_impl', default='auto', choices=['auto', 'xla', 'matmul_grad'])
  p.add_argument('--threads', type=int, default=0, help='PyTorch threads (0: all cores)')
  p.add_argument('--json', default='', help='also write the results to this file')
  a = p.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.path.insert(0, ROOT)
  from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.configure()  # Before JAX starts its backend.
  r = run(a)
  print_table(r)
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(r, f, indent=1)


if __name__ == '__main__':
  main()
