"""End to end: train_and_evaluate on 8 emulated devices writes checkpoints, TensorBoard events,
config.json and results.json; the loss is finite and moves; a rerun resumes instead of restarting.
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from configs import test as test_config
from simclr_jax import checkpointing
from simclr_jax import train


def _scalars(workdir: str, tag: str) -> dict[int, float]:
  """Reads a scalar series back from the TensorBoard event files (independent of our writer)."""
  out = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          out[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField('tensor') else v.simple_value
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = test_config.get_config()
  results = train.train_and_evaluate(config, workdir)
  return config, workdir, results


def test_writes_checkpoints_events_config_and_results(trained):
  config, workdir, results = trained
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert steps == [3, 6]  # checkpoint_every_steps=3, 6 steps, keep 2.
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  saved = checkpointing.read_config(workdir)
  assert saved.train.batch_size == config.train.batch_size
  on_disk = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert on_disk['checkpoint_step'] == 6
  assert set(on_disk['linear_probe']) == {'simclr', 'random_init', 'raw_pixels'}
  for r in on_disk['linear_probe'].values():
    assert 0.0 <= r['top1'] <= r['top5'] <= 1.0
    assert r['num_eval'] == 1000  # Every test example, exactly once.
  assert results['linear_probe']['simclr']['top1'] == on_disk['linear_probe']['simclr']['top1']


def test_loss_is_finite_and_moves(trained):
  _, workdir, _ = trained
  loss = _scalars(workdir, 'train/contrast_loss')
  assert sorted(loss) == [1, 2, 3, 4, 5, 6]  # log_every_seconds=0: every step is logged.
  values = np.array([loss[k] for k in sorted(loss)])
  assert np.all(np.isfinite(values))
  assert np.ptp(values) > 1e-3
  # At initialisation NT-Xent (sum of both directions) is near 2*log(2N-1) for N=32 pairs.
  assert abs(values[0] - 2 * np.log(63)) < 1.5
  lr = _scalars(workdir, 'train/learning_rate')
  assert lr[1] == 0.0  # Official schedule: the first update uses step 0 of the warmup.


def test_rerun_resumes_from_latest_checkpoint(trained, tmp_path, capsys):
  config, workdir, _ = trained
  config = test_config.get_config()
  config.train.steps = 8
  config.eval.baselines = False
  results = train.train_and_evaluate(config, workdir)
  assert 'Resumed from' in capsys.readouterr().out
  assert results['checkpoint_step'] == 8
  loss = _scalars(workdir, 'train/contrast_loss')
  assert 7 in loss and 8 in loss
