"""Real multi-process runs: 2 processes x 4 emulated CPU devices on 127.0.0.1 against 1 process x 8.

Every test here starts separate Python processes that find each other through JAX's distributed
runtime (simclr_jax.main's --coordinator_address / --num_processes / --process_id) and reduce over
Gloo, as the hosts of a pod do over their network. Nothing is simulated in one process.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import multiprocess  # pylint: disable=g-bad-import-order
import mp_train_step  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow


def _rel(a, b):
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_train_step_same_loss_grads_and_bn_stats_in_2_processes(tmp_path):
  """Below the CLI: one jitted step on a fixed global batch, 2 processes x 4 devices vs 1 x 8."""
  out = tmp_path / 'step.npz'
  res = multiprocess.launch(lambda i: ['tests/helpers/mp_train_step.py', f'--out={out}'],
                            num_processes=2, devices_per_process=4, timeout=300)
  assert all(r is not None and r.returncode == 0 for r in res), multiprocess.describe(res)
  assert 'process 1 of 2: 8 devices' in res[1].stdout
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8 and jax.process_count() == 1
  ref = mp_train_step.compute(sharding.make_mesh())
  got = dict(np.load(out))
  assert set(got) == set(ref)
  assert abs(got['loss'] - ref['loss']) <= 1e-5 * abs(ref['loss'])
  for prefix in ('grad', 'stats', 'params'):
    keys = [k for k in ref if k.startswith(prefix)]
    assert keys, prefix
    flat = lambda d, keys=keys: np.concatenate([d[k].ravel().astype(np.float64) for k in keys])
    assert _rel(flat(got), flat(ref)) <= 1e-5, prefix
    assert np.any(flat(ref) != 0), f'{prefix} must not be trivially zero'


# ---- the CLI: python -m simclr_jax.main on 2 processes vs 1 ----

_ARGS = ['-m', 'simclr_jax.main', '--config=configs/test.py', '--config.train.steps=6',
         '--config.train.checkpoint_every_steps=3', '--config.train.eval_every_epochs=0',
         '--config.eval.baselines=False', '--config.eval.embedding_plot_points=200',
         '--config.train.check_finite_every_steps=1']


def _run(workdir, num_processes, devices, audit_dir=None):
  env = None
  if audit_dir is not None:  # Records every file a process opens for writing (Python level).
    env = lambda i: {'PYTHONPATH': os.path.join(multiprocess.ROOT, 'tests', 'helpers', 'write_audit'),
                     'SIMCLR_WRITE_AUDIT': os.path.join(audit_dir, f'process_{i}.txt')}
  res = multiprocess.launch(lambda i: [*_ARGS, f'--workdir={workdir}'],
                            num_processes=num_processes, devices_per_process=devices,
                            timeout=420, env=env)
  assert all(r is not None and r.returncode == 0 for r in res), multiprocess.describe(res)
  return res


def _params(workdir, step):
  """Params, BN statistics and optimiser state of a checkpoint, flattened to float64."""
  arrays = multiprocess.checkpoint_arrays(workdir, step)
  return np.concatenate([np.asarray(v, np.float64).ravel() for k, v in arrays.items()
                         if k != "['step']"])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Workdirs of the same 6-step job run by 2 processes x 4 devices and by 1 process x 8."""
  root = tmp_path_factory.mktemp('multiprocess')
  audit = root / 'audit'
  audit.mkdir()
  two = _run(str(root / 'two'), 2, 4, audit_dir=str(audit))
  one = _run(str(root / 'one'), 1, 8)
  return {'root': root, 'two': str(root / 'two'), 'one': str(root / 'one'), 'two_out': two,
          'one_out': one, 'audit': audit}


def test_2_processes_equal_1_process(runs):
  out0 = runs['two_out'][0].stdout
  assert 'JAX: 2 process(es) via explicit settings; process 0 of 2, 8 cpu device(s) (4 local)' \
      in out0, out0[:2000]
  assert '8 device(s), 2 process(es)' in out0
  r2 = json.loads(open(os.path.join(runs['two'], 'results.json')).read())
  r1 = json.loads(open(os.path.join(runs['one'], 'results.json')).read())
  l2, l1 = r2['final_train_metrics']['total_loss'], r1['final_train_metrics']['total_loss']
  assert abs(l2 - l1) <= 1e-5 * abs(l1), (l2, l1)
  p2, p1 = _params(runs['two'], 6), _params(runs['one'], 6)
  assert _rel(p2, p1) <= 1e-5
  # Evaluation gathered the same features: the probes agree (to an example or two of 1000).
  for name in ('linear_probe', 'knn'):
    assert abs(r2[name]['simclr']['top1'] - r1[name]['simclr']['top1']) <= 0.002, name
  assert r2['examples_evaluated'] == r1['examples_evaluated'] == 1000


def test_only_process_0_writes_results_plot_and_tensorboard(runs):
  two = runs['two']
  assert os.path.exists(os.path.join(two, 'results.json'))
  assert os.path.exists(os.path.join(two, 'embeddings.png'))
  assert len(glob.glob(os.path.join(two, 'events.out.tfevents.*'))) == 1
  written = {i: [l.strip() for l in open(runs['audit'] / f'process_{i}.txt')] for i in (0, 1)}
  outside = lambda paths: [p for p in paths if p.startswith(os.path.realpath(two)) and
                           f'{os.sep}checkpoints{os.sep}' not in p and '.shared_check_' not in p
                           and '.write_probe_' not in p]  # Every process probes writability.
  assert any(p.endswith('results.json') for p in outside(written[0])), written[0]
  assert outside(written[1]) == [], outside(written[1])
  assert 'Linear probe' not in runs['two_out'][1].stdout  # Process 1 prints nothing either.


def _resume_copy(src, dst):
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, 'checkpoints', '6'))  # As if stopped after the step-3 save.
  os.remove(os.path.join(dst, 'results.json'))


def test_2_process_checkpoint_resumes_in_2_processes_and_in_1(runs):
  """The step-3 checkpoint written by 2 processes, resumed by 2 processes and by 1 process x 8:
  both reach the uninterrupted run's step-6 state."""
  full = _params(runs['two'], 6)
  for procs, devices in ((2, 4), (1, 8)):
    dst = str(runs['root'] / f'resume_{procs}')
    _resume_copy(runs['two'], dst)
    res = _run(dst, procs, devices)
    assert 'Resumed from' in res[0].stdout and 'at step 3' in res[0].stdout
    assert _rel(_params(dst, 6), full) <= 1e-5, f'{procs} process(es)'


def test_workdir_not_shared_by_the_processes_stops_before_training(tmp_path):
  """Each host writing to its own local disk (here: each process its own directory under the
  same --workdir name) is refused on every process, with one error line and exit 2."""
  res = multiprocess.launch(
      lambda i: ['-m', 'simclr_jax.main', '--config=configs/test.py',
                 f'--workdir={tmp_path}/host{i}/run'],
      num_processes=2, devices_per_process=4, timeout=300)
  assert all(r is not None for r in res), multiprocess.describe(res)
  for i, r in enumerate(res):
    assert r.returncode == 2, multiprocess.describe(res)
    assert 'error: --workdir=' in r.stderr and 'is not shared by all 2 processes' in r.stderr
    assert 'process(es) 1 cannot see a file that process 0 wrote' in r.stderr
    assert not os.path.exists(tmp_path / f'host{i}' / 'run' / 'checkpoints')


def test_sigterm_to_every_process_stops_all_at_one_step_with_a_checkpoint(tmp_path):
  """A pod's preemption: every host gets SIGTERM; JAX's preemption service picks one step for
  all, both processes save it together and exit with 143."""
  workdir = tmp_path / 'preempted'
  port = multiprocess.free_port()
  procs = [subprocess.Popen(
      [sys.executable, *_ARGS[:3], '--config.train.steps=400',
       '--config.train.checkpoint_every_steps=1000', '--config.train.log_every_seconds=0',
       '--config.eval.baselines=False', f'--workdir={workdir}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=multiprocess.ROOT, env=multiprocess.env_for(4), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    for line in procs[0].stdout:
      if line.startswith('[  3/400]'):
        break
    for p in procs:
      p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [143, 143], [o[1][-2000:] for o in outs]
  stopped = [l for l in outs[0][0].splitlines() if l.startswith('Preempted (SIGTERM)')]
  assert len(stopped) == 1
  step = int(stopped[0].split('after step ')[1].split()[0])
  assert 3 <= step < 400
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(step)]
  assert int(multiprocess.checkpoint_arrays(str(workdir), step)["['step']"]) == step
