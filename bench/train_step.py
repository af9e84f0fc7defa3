"""Training-step throughput of simclr_jax, side by side with PyTorch and TF2 references.

    python bench/train_step.py                       # every section once
    python bench/train_step.py --rounds 2            # alternated sections twice (17 min, 2 cores)
    python bench/train_step.py --sections=models,reference --repeats=5
    python bench/train_step.py --sections=models --models=r50_224 --dtypes=bfloat16 \
        --batch=256 --devices=1                      # one row (used by bench/gpu.sh)

Sections (each row runs in its own subprocess: XLA_FLAGS must be set before JAX starts):
  models     ResNet-18 32 px (CIFAR stem), ResNet-50 64 px and 224 px, float32 and bfloat16
  xla_cpu    simclr_jax/cpu/xla_cpu.py's flag (YNNPACK off for convolutions) against JAX's default
  impl       model.conv_impl 'xla' against 'matmul_grad' (the CPU convolution gradient)
  batch      step time as the global batch grows (network O(N), NT-Xent O(N^2 d)), with the
             loss's own time measured apart
  devices    1, 2 and 4 emulated devices on the same global batch
  reference  the same network, loss and LARS in plain PyTorch (bench/pytorch_reference.py) and
             TF2 (bench/tf2_reference.py), timed in this run; ratios are ours / theirs
             (ResNet-18 32 px B64; --reference_models=r18_32,r50_64 adds ResNet-50 64 px B32)
The step is the real jitted `steps.train_step` (ResNet, 3-layer head, online probe, NT-Xent over
the global batch, LARS) on a fixed synthetic uint8 batch: the input pipeline is excluded, and so
is compilation (reported apart). Each timed step is blocked on, so the table gives the median
step and the spread (min-max) of `--repeats` steps after one warm-up step.

MFU: XLA's cost analysis of the compiled step over the device peak (simclr_jax/plan/chips.py; on CPU a
float32 matmul measured in the same process). Imports neither TensorFlow nor clu (checked), so it
runs on a machine with only jax, flax, optax and ml_collections.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {  # name: (depth, image size, default global batch on CPU)
    'r18_32': (18, 32, 64),
    'r50_64': (50, 64, 32),
    'r50_224': (50, 224, 8),
}


def _config(depth, size, batch, dtype, conv_impl):
  sys.path.insert(0, ROOT)
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.resnet_depth, c.model.width_multiplier, c.model.num_proj_layers = depth, 1.0, 3
  c.data.image_size, c.train.batch_size, c.model.dtype = size, batch, dtype
  c.model.conv_impl = conv_impl
  c.optim.optimizer = 'lars'
  return c


def worker(a) -> dict:
  """One row, in this process: compile, warm up, time `a.repeats` steps."""
  import functools  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.configure()  # Before JAX starts its backend (an entry point's job).
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from simclr_jax import losses, models, optim, sharding, steps  # pylint: disable=g-import-not-at-top,g-multiple-import
  from simclr_jax.plan import utilization  # pylint: disable=g-import-not-at-top
  from simclr_jax.cpu import ops as cpu_ops  # pylint: disable=g-import-not-at-top
  leaked = [m for m in ('tensorflow', 'clu') if m in sys.modules]
  if leaked:
    raise RuntimeError(f'bench/train_step.py must not import {leaked}')
  config = _config(a.depth, a.image_size, a.batch, a.dtype, a.conv_impl)
  mesh = sharding.make_mesh()
  num_examples = 50_000
  model = models.build_model(config, 10, ops=cpu_ops.model_ops(config))
  state = steps.make_init_fn(config, model, optim.create_optimizer(config, num_examples), mesh)()
  lr_fn = optim.create_learning_rate_fn(config, num_examples)
  step = jax.jit(functools.partial(steps.train_step, config=config, lr_fn=lr_fn, mesh=mesh),
                 donate_argnums=(0,))
  b, s = config.train.batch_size, config.data.image_size
  rng = np.random.RandomState(0)
  batch = sharding.global_batch({'views': rng.randint(0, 256, (b, 2, s, s, 3), np.uint8),
                                 'label': rng.randint(0, 10, (b,)).astype(np.int32)}, mesh)
  t = time.perf_counter()
  flops = utilization.step_flops(step, state, batch)
  compile_s = time.perf_counter() - t
  state, m = step(state, batch)  # Warm-up: first dispatch, allocations.
  jax.block_until_ready(m)
  times = []
  for _ in range(a.repeats):
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  pk = utilization.peak(list(mesh.devices.flat))
  med = statistics.median(times)
  row = {'devices': mesh.size, 'compile_s': compile_s, 'step_s': med, 'step_min': min(times),
         'step_max': max(times), 'images_per_s': b / med, 'flops': flops,
         'mfu': flops / med / pk.flops_per_second if flops and pk else None,
         'peak': pk.description if pk else None, 'backend': jax.default_backend(),
         'conv_impl': cpu_ops.resolve_conv_impl(config),
         'loss': float(m['contrast_loss'])}
  mem = jax.devices()[0].memory_stats() or {}
  row['peak_bytes'] = mem.get('peak_bytes_in_use')
  if a.loss_only:  # The NT-Xent alone (forward + backward) on 2N random projections.
    z = jax.random.normal(jax.random.PRNGKey(0), (b, 2, 128))
    z = jax.device_put(z, sharding.batch_sharded(mesh))
    loss = jax.jit(jax.grad(lambda z: losses.nt_xent(z[:, 0], z[:, 1], 0.5, True,
                                                     mesh=mesh)[0]))
    jax.block_until_ready(loss(z))
    lt = []
    for _ in range(max(a.repeats, 3)):
      t = time.perf_counter()
      jax.block_until_ready(loss(z))
      lt.append(time.perf_counter() - t)
    row['loss_s'] = statistics.median(lt)
  return row


def _run_ours(args, *, depth, size, batch, dtype='float32', devices=1, conv_impl=None,
              loss_only=False, env_extra=None) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env_extra or {}))
  if args.platform == 'cpu':
    env.update(JAX_PLATFORMS='cpu',
               XLA_FLAGS=(env.get('XLA_FLAGS', '') +
                          f' --xla_force_host_platform_device_count={devices}').strip())
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', f'--depth={depth}',
         f'--image_size={size}', f'--batch={batch}', f'--dtype={dtype}',
         f'--repeats={args.repeats}', f'--conv_impl={conv_impl or args.conv_impl}'] + (
             ['--loss_only'] if loss_only else [])
  return _json_tail(subprocess.run(cmd, env=env, capture_output=True, text=True), cmd)


def _run_reference(args, module, *, depth, size, batch, dtype='float32', extra=()) -> dict:
  cmd = [sys.executable, os.path.join(ROOT, 'bench', module), f'--depth={depth}',
         f'--image_size={size}', f'--batch={batch}', f'--dtype={dtype}',
         f'--steps={args.repeats}', '--warmup_steps=1', '--proj_layers=3'] + list(extra)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  r = _json_tail(subprocess.run(cmd, env=env, capture_output=True, text=True), cmd)
  if 'error' not in r:
    r.setdefault('step_min', r.get('step_s_min'))
    r.setdefault('step_max', r.get('step_s_max'))
  return r


def _json_tail(proc, cmd) -> dict:
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  err = (proc.stderr.strip().splitlines() or ['no output'])[-1]
  return {'error': f'{os.path.basename(cmd[1])}: {err[:160]}'}


def _fmt(label, r, base=None):
  if 'error' in r:
    return f'| {label} | failed: {r["error"]} |'
  spread = f'{r["step_min"]:.3f}-{r["step_max"]:.3f}' if r.get('step_min') is not None else '-'
  mfu = f'{100 * r["mfu"]:.1f}%' if r.get('mfu') else '-'
  comp = f'{r["compile_s"]:.1f}' if r.get('compile_s') is not None else '-'
  ratio = f'{r["images_per_s"] / base:.2f}' if base else '-'
  return (f'| {label} | {comp} | {r["step_s"]:.3f} | {spread} | {r["images_per_s"]:.1f} | '
          f'{mfu} | {ratio} |')


def _alternate(args, rows, section, variants, models=('r18_32', 'r50_64')):
  """Per model, `args.rounds` rounds of every (label, _run_ours kwargs) variant in turn (the
  machine's noise can exceed the effect); ratios against the round's first variant."""
  for name in models:
    depth, size, batch = MODELS[name]
    for rep in range(args.rounds):
      base = None
      for label, kwargs in variants:
        r = _run_ours(args, depth=depth, size=size, batch=batch, **kwargs)
        rows[f'{section}/{name}/{label}/{rep}'] = r
        base = base or r.get('images_per_s')
        print(_fmt(f'ResNet-{depth} {size} px B{batch}: {label} (run {rep + 1})', r, base),
              flush=True)


HEADER = ('| row | compile s | step s (median) | spread (min-max) | images/s | MFU | ratio |\n'
          '|---|---|---|---|---|---|---|')


def _reference_round(args, rows, rep, *, depth, size, batch, key) -> None:
  """One alternation: ours on 1 and 2 devices, PyTorch NCHW and channels_last, TF2."""
  ours = {n: _run_ours(args, depth=depth, size=size, batch=batch, devices=n) for n in (1, 2)}
  kw = dict(depth=depth, size=size, batch=batch)
  theirs = {'PyTorch 2.13 (NCHW)': _run_reference(args, 'pytorch_reference.py', **kw),
            'PyTorch 2.13 (channels_last)': _run_reference(args, 'pytorch_reference.py', **kw,
                                                           extra=['--channels_last']),
            'TF2 reference (tf.function)': _run_reference(args, 'tf2_reference.py', **kw)}
  for n, r in ours.items():
    rows[f'{key}/ours_{n}dev/{rep}'] = r
    print(_fmt(f'simclr_jax, {n} emulated device(s) (run {rep + 1})', r), flush=True)
  best = max(r.get('images_per_s', 0) for r in ours.values())
  for label, r in theirs.items():
    rows[f'{key}/{label}/{rep}'] = r
    ratio = best / r['images_per_s'] if 'images_per_s' in r else None
    line = _fmt(f'{label} (run {rep + 1})', r)
    print(line if ratio is None else line.rsplit('| - |', 1)[0] + f'| {ratio:.2f} |', flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--sections', default='models,xla_cpu,impl,batch,devices,reference')
  p.add_argument('--models', default='r18_32,r50_64,r50_224')
  p.add_argument('--reference_models', default='r18_32',
                 help='models of the reference section (r18_32 is the issue\'s comparison)')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--repeats', type=int, default=3, help='timed steps per row (after 1 warm-up)')
  p.add_argument('--rounds', type=int, default=1,
                 help='alternations of the impl and reference sections (noise check)')
  p.add_argument('--batch', type=int, default=0, help='global batch for the models section '
                 '(0: each model\'s CPU default)')
  p.add_argument('--devices', type=int, default=1, help='devices for the models section')
  p.add_argument('--platform', default='cpu', help="'cpu' (emulated devices) or 'gpu'")
  p.add_argument('--json', default='', help='also write every row to this JSON file')
  # Worker-only flags.
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--depth', type=int, default=18, help=argparse.SUPPRESS)
  p.add_argument('--image_size', type=int, default=32, help=argparse.SUPPRESS)
  p.add_argument('--dtype', default='float32', help=argparse.SUPPRESS)
  p.add_argument('--conv_impl', default='auto',
                 help="model.conv_impl of every row outside the impl section ('auto': "
                      "matmul_grad on CPU, xla on GPU)")
  p.add_argument('--loss_only', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    print(json.dumps(worker(args)), flush=True)
    return
  sections = args.sections.split(',')
  rows = {}
  print(f'bench/train_step.py on {os.cpu_count()} cores, platform {args.platform}, '
        f'{args.repeats} timed steps per row; load average {os.getloadavg()[0]:.1f}', flush=True)

  if 'models' in sections:
    print('\n### Models (global batch; 3-layer head, online probe, LARS)\n' + HEADER)
    for name in args.models.split(','):
      depth, size, batch = MODELS[name]
      batch = args.batch or batch
      base = None
      for dtype in args.dtypes.split(','):
        r = _run_ours(args, depth=depth, size=size, batch=batch, dtype=dtype,
                      devices=args.devices)
        rows[f'models/{name}/{dtype}'] = r
        base = base or r.get('images_per_s')
        print(_fmt(f'ResNet-{depth} {size} px B{batch} {dtype} ({args.devices} dev)', r, base),
              flush=True)

  if 'xla_cpu' in sections:
    print('\n### XLA:CPU convolutions: YNNPACK (JAX default, one thread) against Eigen (the flag '
          'simclr_jax sets), 1 device, conv_impl auto (ratio vs YNNPACK)\n' + HEADER)
    _alternate(args, rows, 'xla_cpu', [
        ('YNNPACK', {'env_extra': {'SIMCLR_JAX_XLA_CPU_FLAGS': '0'}}),
        ('Eigen', {'env_extra': {'SIMCLR_JAX_XLA_CPU_FLAGS': '1'}})])

  if 'impl' in sections:
    print('\n### model.conv_impl on XLA:CPU: float32, 1 device (ratio vs xla in the same round)\n'
          + HEADER)
    _alternate(args, rows, 'impl', [(impl, {'conv_impl': impl}) for impl in ('xla', 'matmul_grad')])

  if 'batch' in sections:
    print('\n### Global batch: ResNet-18 32 px float32, 1 device (ratio: images/s vs B16)\n'
          '| global batch | step s | images/s | ms per image | NT-Xent fwd+bwd ms | ratio |\n'
          '|---|---|---|---|---|---|')
    base = None
    for batch in (16, 32, 64):
      r = _run_ours(args, depth=18, size=32, batch=batch, loss_only=True)
      rows[f'batch/{batch}'] = r
      if 'error' in r:
        print(f'| {batch} | failed: {r["error"]} |')
        continue
      base = base or r['images_per_s']
      print(f'| {batch} | {r["step_s"]:.3f} | {r["images_per_s"]:.1f} | '
            f'{1e3 * r["step_s"] / batch:.1f} | {1e3 * r["loss_s"]:.2f} | '
            f'{r["images_per_s"] / base:.2f} |', flush=True)

  if 'devices' in sections:
    print('\n### Emulated devices: ResNet-18 32 px B64 float32 (ratio vs 1 device)\n' + HEADER)
    base = None
    for n in (1, 2, 4):
      r = _run_ours(args, depth=18, size=32, batch=64, devices=n)
      rows[f'devices/{n}'] = r
      base = base or r.get('images_per_s')
      print(_fmt(f'{n} device(s)', r, base), flush=True)

  if 'reference' in sections:
    for name in args.reference_models.split(','):
      depth, size, batch = MODELS[name]
      print(f'\n### Side by side: ResNet-{depth} {size} px B{batch} float32, LARS (ratio: ours / '
            'theirs, images/s; alternated --rounds times)\n' + HEADER)
      for rep in range(args.rounds):
        _reference_round(args, rows, rep, depth=depth, size=size, batch=batch,
                         key='reference' if name == 'r18_32' else f'reference_{name}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
