"""Evaluation at ImageNet scale on a TPU v3-128, proved by the compiler and by arithmetic.

The evaluation functions are compiled (never run) for configs/tpu_v3_128.py's real sizes on 128
emulated CPU devices (in a subprocess: the device count must be set before JAX starts), and XLA's
memory analysis bounds what each device needs: its shards of the features it reads, plus at most
TEMP_BOUND of temporaries, whatever the number of examples. For scale: gathered to a host as
before, the train features alone were 10.5 GB, and the full-batch probe's [1.28M, 1000] logits
5.1 GB on one device.
"""

import json
import os
import subprocess
import sys

import pytest

from configs import gpu_8x
from configs import imagenet
from configs import tpu_v3_128
from configs import tpu_v3_32
from simclr_jax.plan import eval_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2 ** 20
TEMP_BOUND = 64 * MIB  # Temporaries of any evaluation function, per device.
TOTAL_BOUND = 256 * MIB  # Everything one evaluation function needs on a device (v3 core: 16 GiB).
IMAGENET = dict(num_probe=1_281_167, num_eval=50_000)

# The config's plan, and the functions that read the probe split once more for a split 10x
# ImageNet's (12.8M examples: 800 MiB of features per device, abstract, never allocated).
_SCRIPT = """
import dataclasses, json, sys
from configs import tpu_v3_128
from simclr_jax.plan import eval_plan
config = tpu_v3_128.get_config()
plan = eval_plan.compile_eval_plan(config, 128, {num_probe}, {num_eval}, 1000)
print('PLAN ' + json.dumps(dataclasses.asdict(plan)))
big = eval_plan.compile_eval_plan(config, 128, 10 * {num_probe}, {num_eval}, 1000,
                                  only=('knn_whole', 'moments', 'fit', 'probe_acc'))
print('BIG ' + json.dumps(dataclasses.asdict(big)))
"""


@pytest.fixture(scope='module')
def plan():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=128',
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, '-c', _SCRIPT.format(**IMAGENET)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  out = {}
  for line in r.stdout.splitlines():
    key, _, rest = line.partition(' ')
    if key in ('PLAN', 'BIG'):
      out[key] = json.loads(rest)
  return out['PLAN'], out['BIG']


def test_rows_are_imagenet_sized(plan):
  plan, big = plan
  assert plan['num_devices'] == 128 and plan['feature_dim'] == 2048
  # Whole eval batches of 4096: the 1.28M train split, its 100k-image kNN bank, 50k validation.
  assert plan['rows'] == {'probe': 313 * 4096, 'bank': 25 * 4096, 'eval': 13 * 4096}
  assert big['rows']['probe'] == 3128 * 4096
  assert set(plan['functions']) == set(eval_plan.FUNCTIONS)


def test_every_evaluation_function_fits_a_bound_independent_of_the_split_size(plan):
  plan, big = plan
  for name, b in plan['functions'].items():
    assert b['temp'] <= TEMP_BOUND, (name, b)
    assert b['total'] <= b['arguments'] + TEMP_BOUND + MIB, (name, b)
    assert b['total'] <= TOTAL_BOUND, (name, b)
  f = plan['functions']
  # Arguments are the shards of the bank and the queries (and labels, masks), not whole arrays.
  for key, rows in (('knn', plan['rows']['bank']), ('knn_whole', plan['rows']['probe'])):
    shards = (rows * (2048 * 4 + 4 + 1) + plan['rows']['eval'] * 2048 * 4) // 128
    assert shards <= f[key]['arguments'] <= shards + MIB, key
  # Ten times the examples: ten times the shards, the same working memory (kNN: O(query chunk x
  # bank chunk); probe: O(minibatch share + parameters); moments and accuracy: O(row chunk)).
  for key, b in big['functions'].items():
    assert abs(b['temp'] - f[key]['temp']) <= MIB, (key, b, f[key])
    assert b['arguments'] > 9 * f[key]['arguments'] - 10 * MIB, key
  # The probe trains from the features' shards (78 MiB), never a copy of them.
  assert f['fit']['temp'] < plan['rows']['probe'] * 2048 * 4 // 128 / 2
  # Extraction writes each batch into the features' buffer in place.
  assert f['store']['alias'] >= plan['shards']['probe'] and f['store']['temp'] <= MIB


@pytest.mark.parametrize('module', [imagenet, tpu_v3_32, tpu_v3_128, gpu_8x])
def test_imagenet_configs_spend_at_most_5_percent_on_evaluation(module):
  cost = eval_plan.eval_cost(module.get_config(), 1_281_167, **IMAGENET)
  assert cost.monitors == 11 and cost.per_monitor == 150_000
  assert cost.compute_fraction <= 0.05 and cost.host_fraction <= 0.05
  # The docstring shows this arithmetic.
  doc = ' '.join(imagenet.__doc__.split())
  for text in (f'{cost.train_images / 1e6:.1f}M images', f'{cost.eval_images / 1e6:.2f}M eval',
               f'{cost.compute_fraction:.2%} of the run', f'= {cost.host_fraction:.1%}'):
    assert text in doc, text


def test_whole_split_every_5_epochs_would_cost_more():
  config = imagenet.get_config()
  config.train.eval_every_epochs = 5.0
  config.eval.knn_bank_size = 0
  cost = eval_plan.eval_cost(config, 1_281_167, **IMAGENET)
  assert cost.host_fraction > 0.2  # 21 monitors x 1.33M images: the old default.
  assert f'{cost.compute_fraction:.1%} / {cost.host_fraction:.0%}' in ' '.join(
      imagenet.__doc__.split())
