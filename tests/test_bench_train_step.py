"""bench/train_step.py's worker: one row runs, reports a plausible MFU, and imports neither
TensorFlow nor clu (it raises if it does), so it runs on a GPU image without them."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_worker_row_without_tf_or_clu():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'bench', 'train_step.py'), '--worker', '--depth=10',
       '--image_size=8', '--batch=4', '--repeats=2', '--loss_only', '--conv_impl=auto'],
      env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row['devices'] == 2 and row['conv_impl'] == 'matmul_grad'
  assert row['step_min'] <= row['step_s'] <= row['step_max']
  assert row['images_per_s'] == 4 / row['step_s']
  assert row['flops'] > 0 and 0 < row['mfu'] < 1
  assert row['loss_s'] > 0
