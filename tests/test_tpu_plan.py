"""The plan on the TPU compiler (libtpu, compile-only on this CPU machine): topologies, a small
step compiled for a v3 slice (fits, the designed collectives and nothing else), the command line
(which compiles for v5e), the missing-libtpu line, and the max-batch bisection.

libtpu is in the test extra: without it these tests FAIL (CI must compile for a TPU)."""

import os
import subprocess
import sys

import pytest

from configs import test as test_config
from simclr_jax.plan import chips
from simclr_jax.plan import collectives
from simclr_jax.plan import jobs
from simclr_jax.plan import step
from simclr_jax.plan import tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = os.path.join(ROOT, 'tests', 'helpers')


def test_libtpu_is_installed():
  assert tpu.available(), tpu.INSTALL


@pytest.mark.parametrize('key,num_devices,expected,compiled', [
    ('tpu_v3', 32, 'v3:4x4', 32), ('tpu_v3', 128, 'v3:8x8', 128),
    ('tpu_v4', 16, 'v4:2x2x4', 32),  # Two TensorCores per chip in the compile-only topology.
    ('tpu_v5e', 16, 'v5e:4x4', 16), ('tpu_v5p', 8, 'v5p:2x2x2', 8), ('tpu_v6e', 8, 'v6e:2x4', 8)])
def test_every_tpu_chip_has_a_topology_the_compiler_knows(key, num_devices, expected, compiled):
  topology = tpu.default_topology(key, num_devices)
  assert topology == expected and tpu.chip_key(topology) == key
  devices = tpu.devices(topology)
  assert len(devices) == compiled
  # A v3-32 is 4 hosts of 8 cores; v3-128 16 hosts: the plan compiles the pod's own layout.
  hosts = {d.process_index for d in devices}
  assert len(hosts) == compiled // {'tpu_v3': 8, 'tpu_v4': 8}.get(key, 4)
  chip = tpu.device_chip(chips.get(key), key, devices)
  assert chip.memory_bytes * compiled == chips.get(key).memory_bytes * num_devices


@pytest.mark.parametrize('bad', ['v3', 'v9:2x2', 'tpu_v3:2x2', 'v3:4'])
def test_a_bad_topology_names_what_is_allowed(bad):
  with pytest.raises(tpu.TopologyError, match=r"allowed: .*'v3:8x8'"):
    tpu.chip_key(bad)


@pytest.mark.parametrize('topology', ['v3:2x2'])  # v5e compiles too; 45 s of CI time.
def test_a_small_step_compiles_for_tpu_fits_and_has_the_designed_collectives(topology):
  """ResNet-18 at 64 px, bf16, B 256: the TPU compiler's memory and cost, and the program's
  collectives: the loss's all-gather of both views' projections, all-reduces, nothing else."""
  config = test_config.get_config()
  config.model.update(resnet_depth=18, width_multiplier=1.0, proj_out_dim=128, dtype='bfloat16')
  config.data.image_size, config.train.batch_size = 64, 256
  devices = tpu.devices(topology)
  key = tpu.chip_key(topology)
  chip = tpu.device_chip(chips.get(key), key, devices)
  plan = step.compile_plan(config, devices, num_train=50_000, num_classes=10)
  assert plan.platform == 'tpu' and plan.num_devices == len(devices)
  assert 0 < plan.nbytes['total'] < 0.9 * chip.memory_bytes
  assert plan.nbytes['params'] == 4 * plan.num_params  # Replicated float32.
  assert plan.bytes_accessed > 0
  # libtpu's cost model estimates v3 steps; for v5e it returns a negative time, which the plan
  # reports as no estimate.
  assert (plan.optimal_seconds > 0) if topology.startswith('v3') else plan.optimal_seconds is None
  # The TPU's FLOP count is the partitioned (per-device) module's: near the analytic count / n.
  assert 0.9 < plan.xla_flops * len(devices) / plan.analytic_valid['total'] < 1.2
  c = plan.collectives
  # The partitioner may reduce-scatter gradients (it does on v5e); nothing else is in the design.
  assert set(c['ops']) <= {'all-gather', 'all-reduce', 'reduce-scatter'}, c
  assert 'all-reduce' in c['ops']
  # Each view's [B, 128] float32 projections gathered whole on every device: 2 x B x 128 x 4
  # bytes, by all-gathers or all-reduces of zero-padded blocks (XLA does so on v3:8x8); on v5e
  # the backward pass's transpose of the gather is an all-gather too.
  gathered = c['loss_gather'].get('all-gather', [0, 0])
  assert gathered[0] >= 2 and gathered[1] % (2 * 256 * 128 * 4) == 0, c['loss_gather']
  if topology == 'v3:2x2':
    assert c['loss_gather'] == {'all-gather': [2, 2 * 256 * 128 * 4]}
  # Every gradient is all-reduced at least once (bf16 convolution kernels: 2 bytes each).
  assert c['ops']['all-reduce'][1] >= 2 * plan.num_params
  assert c['host_transfers'] == 0


def _plan_cli(*args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, '-m', 'simclr_jax.plan', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


def test_the_command_line_compiles_for_the_tpu_and_says_so():
  r = _plan_cli('--config=configs/test.py', '--chip=tpu_v5e', '--num_devices=4', '--noeval')
  assert r.returncode == 0, r.stderr
  first = r.stdout.splitlines()[0]
  assert 'compiled by TPU compiler (libtpu) for v5e:2x2: 4 TPU v5 lite devices on 1 host' in first
  for text in ('memory per device (TPU memory_analysis)', 'headroom', 'optimal_seconds',
               'MFU it implies', 'NT-Xent gather of projections (all-gather)', 'per view'):
    assert text in r.stdout, text
  assert 'E0000' not in r.stderr  # libtpu's metadata-server complaints are quieted.


def test_without_libtpu_the_plan_says_how_to_get_it_in_one_line():
  r = _plan_cli('--config=configs/tpu_v3_32.py',
                env_extra={'PYTHONPATH': os.path.join(HELPERS, 'no_libtpu')})
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and "pip install -e '.[tpu]'" in errors[0], r.stderr
  # GPUs are XLA:CPU's estimate and say so first.
  r = _plan_cli('--config=configs/test.py', '--chip=h100', '--num_devices=2', '--noeval',
                '--config.train.batch_size=8')
  assert r.returncode == 0, r.stderr
  assert 'an ESTIMATE (libtpu cannot target h100)' in r.stdout.splitlines()[0]


def test_max_batch_bisects_to_the_largest_fitting_multiple(monkeypatch):
  """With a compiler whose memory grows 1 MiB per pair per device on top of 10 MiB, and 200 MiB
  at 10% headroom (180 MiB usable), the largest multiple of 8 pairs is 168 per device."""
  per_pair, base, mib = 2 ** 20, 10 * 2 ** 20, 2 ** 20

  class Compiled:

    def __init__(self, b):
      self.b = b

    def memory_analysis(self):
      class M:  # pylint: disable=too-few-public-methods
        argument_size_in_bytes = base + self.b * per_pair
        temp_size_in_bytes = output_size_in_bytes = alias_size_in_bytes = 0
      return M()

  def fake_compile(_, __, batch):
    b = batch['per_device']
    if b > 200:
      raise step.DoesNotFit('RESOURCE_EXHAUSTED: out of memory')
    return Compiled(b), 0.0, 0.0

  n = 4
  monkeypatch.setattr(jobs, 'abstract_job_step', lambda c, devices, *_: (
      None, None, {'per_device': c.train.batch_size // n}, None))
  monkeypatch.setattr(step, 'compile_step', fake_compile)
  config = test_config.get_config()
  config.train.batch_size = 4 * 32
  best, tried = step.max_batch(config, [None] * n, 1000, 10, 200 * mib, log=lambda _: None)
  assert best == 168 * n
  assert tried[256 * n] is None  # Out of memory is "does not fit", not an error.
  config.train.batch_size = 4 * 1000  # Start above: halves, then bisects.
  assert step.max_batch(config, [None] * n, 1000, 10, 200 * mib, log=lambda _: None)[0] == 168 * n


def test_a_negative_or_missing_cost_model_time_is_no_estimate():
  # libtpu 0.0.42.1 returns a negative optimal_seconds for v4 and v5e steps.
  assert step._optimal_seconds({'optimal_seconds': -3.0}) is None  # pylint: disable=protected-access
  assert step._optimal_seconds({}) is None  # pylint: disable=protected-access
  assert step._optimal_seconds({'optimal_seconds': 0.25}) == 0.25  # pylint: disable=protected-access


def test_collectives_are_read_from_hlo_text():
  hlo = '\n'.join([
      '  %ag = f32[256,128]{1,0:T(8,128)} all-gather(%p), dimensions={0}, '
      'metadata={op_name="jit(train_step)/shard_map/all_gather"}',
      '  %ags = (bf16[32,16]{1,0}, bf16[256,16]{1,0}) all-gather-start(%q), dimensions={0}',
      '  %agd = bf16[256,16]{1,0} all-gather-done(%ags)',
      '  %ar = (f32[64]{0}, bf16[3,3,64,64]{3,2,1,0}) all-reduce(%a, %b), to_apply=%sum',
      '  ROOT %cp = u8[10]{0} collective-permute(%c), source_target_pairs={{0,1}}',
      '  %cb = f32[] custom-call(), custom_call_target="xla_ffi_python_cpu_callback"'])
  s = collectives.summarise(hlo)
  assert s['ops'] == {'all-gather': [2, 256 * 128 * 4 + 256 * 16 * 2],
                      'all-reduce': [1, 64 * 4 + 9 * 64 * 64 * 2],
                      'collective-permute': [1, 10]}
  assert s['dtypes']['all-reduce'] == {'f32': 256, 'bf16': 9 * 64 * 64 * 2}
  assert s['loss_gather'] == {'all-gather': [1, 256 * 128 * 4]} and s['host_transfers'] == 1
