"""bench/gpu.sh --cpu-smoke: the GPU benchmark's whole path (batch search with an out-of-memory
stop, our jitted step, the PyTorch reference under torch.compile, FLOPs, MFU, the table) on the
CPU with a tiny model."""

import glob
import os
import re
import subprocess

import pytest

pytest.importorskip('torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ml_collections_wheel_is_carried_for_the_gpu_machine():
  assert glob.glob(os.path.join(ROOT, 'bench', 'wheels', 'ml_collections-1.1.0-*.whl'))


@pytest.mark.slow
def test_cpu_smoke_prints_the_table():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS',)}
  p = subprocess.run(['bash', os.path.join(ROOT, 'bench', 'gpu.sh'), '--cpu-smoke'], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = p.stdout
  assert re.search(r'^impl\s+batch\s+step s\s+min s\s+max s\s+images/s\s+TFLOP/step\s+MFU %',
                   out, re.M), out
  number = r'[0-9.]+(?:e[-+]?\d+)?'
  for impl in ('ours', 'torch'):
    row = re.search(rf'^{impl}\s+4\s+({number})\s+{number}\s+{number}\s+({number})\s+{number}'
                    rf'\s+({number})', out, re.M)
    assert row, (impl, out, p.stderr[-3000:])
    step_s, images_per_s, mfu = (float(x) for x in row.groups())
    assert step_s > 0 and images_per_s > 0 and mfu > 0
    assert re.search(rf'^{impl}\s+8\s+OOM', out, re.M), out  # The search stopped at batch 8.
  assert re.search(r'^best: ours .* ours/torch = [0-9.]+$', out, re.M), out
