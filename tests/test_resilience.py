"""Runs that lose nothing, tested with real subprocesses of `python -m simclr_jax.main`:
SIGTERM (preemption) saves and exits, `kill -9` + rerun resumes bitwise, a damaged latest
checkpoint falls back to the newest good one, and a rerun with another config is refused."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import multiprocess  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow

_ARGS = ['-m', 'simclr_jax.main', '--config=configs/test.py', '--config.train.steps=16',
         '--config.train.checkpoint_every_steps=4', '--config.train.keep_checkpoints=3',
         '--config.train.eval_every_epochs=0', '--config.eval.baselines=False',
         '--config.eval.embedding_plot_points=0', '--config.eval.probe_steps=10']


def _popen(workdir, *extra):
  return subprocess.Popen([sys.executable, *_ARGS, *extra, f'--workdir={workdir}'],
                          cwd=multiprocess.ROOT, env=multiprocess.env_for(2),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(workdir, *extra, timeout=300):
  p = _popen(workdir, *extra)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _steps(workdir):
  """Finalised checkpoint steps (Orbax renames a finished save into place)."""
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


_state = multiprocess.checkpoint_arrays


def _assert_bitwise(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('resilience') / 'full')
  rc, out, err = _run(workdir)
  assert rc == 0, err[-3000:]
  assert _steps(workdir) == [8, 12, 16]
  return workdir


def test_kill_9_after_a_checkpoint_then_rerun_is_bitwise_the_uninterrupted_run(
    uninterrupted, tmp_path):
  workdir = str(tmp_path / 'killed')
  p = _popen(workdir)
  # Once K/2 = 8 steps are checkpointed, it dies at a random moment, without warning. However
  # fast the steps run, the conditions below hold: a run that got further (even to its end)
  # before the kill landed still resumes from its newest checkpoint.
  while not any(s >= 8 for s in _steps(workdir)) and p.poll() is None:
    time.sleep(0.05)
  assert any(s >= 8 for s in _steps(workdir)), p.communicate()[1][-3000:]
  time.sleep(random.uniform(0.0, 0.2))
  p.kill()
  p.communicate()
  assert p.returncode in (-signal.SIGKILL, 0), p.returncode
  killed_at = max(_steps(workdir))
  assert 8 <= killed_at <= 16, killed_at
  rc, out, err = _run(workdir)  # The same command again.
  assert rc == 0, err[-3000:]
  assert f'Resumed from {workdir}/checkpoints at step {killed_at}' in out
  _assert_bitwise(_state(workdir, 16), _state(uninterrupted, 16))


def test_damaged_latest_checkpoint_falls_back_keeps_it_and_finishes(uninterrupted, tmp_path):
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(uninterrupted, workdir)
  os.remove(os.path.join(workdir, 'results.json'))
  latest = os.path.join(workdir, 'checkpoints', '16', 'default')
  data = [os.path.join(r, f) for r, _, fs in os.walk(latest) for f in fs
          if os.sep + 'd' + os.sep in os.path.join(r, f)]
  assert data
  for f in data:  # A copy cut short: every array file truncated to half.
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)
  rc, out, err = _run(workdir)
  assert rc == 0, err[-3000:]
  assert 'warning: checkpoint step 16' in out and 'cannot be restored' in out, out[-3000:]
  assert f'Resumed from {workdir}/checkpoints at step 12' in out
  moved = os.listdir(os.path.join(workdir, 'damaged_checkpoints'))
  assert len(moved) == 1 and moved[0].startswith('16-')  # Kept aside, not deleted.
  assert 12 in _steps(workdir) and 16 in _steps(workdir)  # The good one survives.
  assert os.path.exists(os.path.join(workdir, 'results.json'))
  _assert_bitwise(_state(workdir, 16), _state(uninterrupted, 16))


def test_sigterm_finishes_the_step_saves_and_exits(tmp_path):
  workdir = str(tmp_path / 'preempted')
  p = _popen(workdir, '--config.train.steps=400', '--config.train.checkpoint_every_steps=1000',
             '--config.train.log_every_seconds=0')
  for line in p.stdout:
    if line.startswith('[  5/400]'):
      break
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 143, err[-3000:]
  assert 'SIGTERM: finishing the current step' in err
  stopped = [l for l in out.splitlines() if l.startswith('Preempted (SIGTERM): stopped after')]
  assert len(stopped) == 1, out[-2000:]
  step = int(stopped[0].split('after step ')[1].split()[0])
  assert 5 <= step < 400 and _steps(workdir) == [step]  # Saved, and final (renamed into place).
  assert int(_state(workdir, step)["['step']"]) == step


def test_second_sigterm_exits_at_once(tmp_path):
  workdir = str(tmp_path / 'twice')
  p = _popen(workdir, '--config.train.steps=400', '--config.train.checkpoint_every_steps=1000',
             '--config.train.log_every_seconds=0')
  for line in p.stdout:
    if line.startswith('[  3/400]'):
      break
  p.send_signal(signal.SIGTERM)
  for line in p.stderr:  # The first one is being handled...
    if 'SIGTERM: finishing the current step' in line:
      break
  p.send_signal(signal.SIGTERM)  # ...and the second cuts it short.
  out, err = p.communicate(timeout=60)
  assert p.returncode == 143
  assert 'Second SIGTERM: exiting at once' in err
  assert 'Preempted' not in out


def test_rerun_with_another_model_is_refused_and_config_kept(uninterrupted):
  before = open(os.path.join(uninterrupted, 'config.json')).read()
  rc, out, err = _run(uninterrupted, '--config.model.resnet_depth=18',
                      '--config.optim.learning_rate=2.0', '--config.eval.knn_k=5')
  assert rc == 2
  lines = [l for l in err.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, err[-2000:]
  assert 'model.resnet_depth: 10 -> 18' in lines[0]
  assert 'optim.learning_rate: 1.2 -> 2.0' in lines[0]
  assert 'knn_k' not in lines[0]  # Evaluation settings are harmless.
  assert '--allow_config_change' in lines[0]
  assert open(os.path.join(uninterrupted, 'config.json')).read() == before
  assert 'Traceback' not in err
