"""Pretraining-step throughput on this machine: images/s (2 views each) of the jitted train step.

    python bench/train_step.py [--config=configs/default.py] [--devices=1,2] [--steps=10]

Each device count runs in its own subprocess (XLA_FLAGS must be set before JAX starts), on a
fixed synthetic uint8 batch, so the input pipeline is excluded; compile time is reported apart.
Prints a table; ratios are measured side by side in one run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(config_path: str, steps: int, overrides: list[str]) -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from ml_collections import config_flags  # noqa: F401  (import for side effects only)
  import importlib.util
  sys.path.insert(0, ROOT)
  from simclr_jax import models, optim, sharding, steps as steps_lib, train
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(ROOT, config_path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  for o in overrides:
    key, value = o.split('=', 1)
    group, field = key.split('.')
    config[group][field] = type(config[group][field])(value)
  mesh = sharding.make_mesh()
  num_examples = 50_000
  model = models.build_model(config, 10)
  init_fn = train.make_init_fn(config, model, optim.create_optimizer(config, num_examples), mesh)
  state = init_fn()
  lr_fn = optim.create_learning_rate_fn(config, num_examples)
  step = jax.jit(functools.partial(steps_lib.train_step, config=config, lr_fn=lr_fn, mesh=mesh),
                 donate_argnums=(0,))
  b, s = config.train.batch_size, config.data.image_size
  rng = np.random.RandomState(0)
  batch = sharding.global_batch({'views': rng.randint(0, 256, (b, 2, s, s, 3), np.uint8),
                                 'label': rng.randint(0, 10, (b,)).astype(np.int32)}, mesh)
  t = time.time()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.time() - t
  t = time.time()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  dt = time.time() - t
  return {'devices': mesh.size, 'compile_s': compile_s, 'step_s': dt / steps,
          'images_per_s': b * steps / dt}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='configs/default.py')
  p.add_argument('--devices', default='1,2')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--override', action='append', default=[], help='group.field=value')
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    print(json.dumps(worker(args.config, args.steps, args.override)))
    return
  rows = []
  for n in [int(x) for x in args.devices.split(',')]:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
               JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
    cmd = [sys.executable, __file__, '--worker', '--config', args.config, '--steps',
           str(args.steps)] + [f'--override={o}' for o in args.override]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
  base = rows[0]['images_per_s']
  print(f'config={args.config} overrides={args.override} steps={args.steps} (cores: {os.cpu_count()})')
  print(f'{"devices":>8} {"compile s":>10} {"step s":>8} {"images/s":>9} {"views/s":>8} {"vs first":>8}')
  for r in rows:
    print(f'{r["devices"]:>8} {r["compile_s"]:>10.1f} {r["step_s"]:>8.3f} {r["images_per_s"]:>9.1f} '
          f'{2 * r["images_per_s"]:>8.1f} {r["images_per_s"] / base:>8.2f}')


if __name__ == '__main__':
  main()
