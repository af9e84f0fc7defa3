"""What a pod does when one host sees something the others do not: real processes, each fault
injected into ONE of them (tests/helpers/faults/sitecustomize.py, via SIMCLR_FAULTS).

On one machine every process sees the same files, errors and listings, so a multi-host defect
(a host that skips a collective the others wait in, a host that restores another step) cannot
show unless one process is made to differ. Each test bounds its processes' time: a hang is a
failure (the processes are killed), never a stuck suite.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

import pytest

import multiprocess  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow

FAULTS_DIR = os.path.join(multiprocess.ROOT, 'tests', 'helpers', 'faults')
_ARGS = ['-m', 'simclr_jax.main', '--config=configs/test.py', '--config.train.steps=6',
         '--config.train.checkpoint_every_steps=3', '--config.eval.baselines=False',
         '--config.eval.embedding_plot_points=0', '--config.eval.probe_steps=10']


def _faults(faults_by_process):
  """env(i) for multiprocess.launch: the fault injector on every process, faults on some."""
  return lambda i: {'PYTHONPATH': os.pathsep.join([multiprocess.ROOT, FAULTS_DIR]),
                    'SIMCLR_FAULTS': faults_by_process.get(i, '')}


def _launch(workdir, faults, *extra, num_processes=2, timeout=240):
  return multiprocess.launch(lambda i: [*_ARGS, *extra, f'--workdir={workdir}'],
                             num_processes=num_processes, devices_per_process=2,
                             timeout=timeout, env=_faults(faults))


def _errors(results):
  """Each process's `error: ` lines. Orbax's aborted reads print asyncio tracebacks from other
  threads as the interpreter exits, which can land on the same line before ours (one write)."""
  return [[l[l.index('error: '):] for l in r.stderr.splitlines() if 'error: ' in l]
          for r in results]


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 6-step run (checkpoints 3 and 6) written by one process."""
  workdir = str(tmp_path_factory.mktemp('faults') / 'trained')
  [res] = multiprocess.launch(lambda i: [*_ARGS, f'--workdir={workdir}'], num_processes=1,
                              devices_per_process=4, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert _steps(workdir) == [3, 6]
  os.remove(os.path.join(workdir, 'results.json'))
  return workdir


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_restore_failing_on_one_host_stops_every_host_and_moves_nothing(trained, tmp_path):
  """Process 1's read fails (a storage error only it sees): both processes stop, promptly,
  with the same one-line error naming the step, the process and the error; the good
  checkpoints stay where they are (before: both were moved aside and the run restarted)."""
  workdir = _copy(trained, tmp_path / 'w')
  res = _launch(workdir, {1: 'restore_fails'})
  assert [r.returncode for r in res] == [1, 1], multiprocess.describe(res)
  errors = _errors(res)
  assert errors[0] == errors[1] and len(errors[0]) == 1, errors
  assert ('checkpoint step 6 in ' in errors[0][0] and 'on process 1 of 2' in errors[0][0]
          and 'injected storage error' in errors[0][0] and 'nothing was moved' in errors[0][0])
  assert _steps(workdir) == [3, 6]
  assert not os.path.exists(os.path.join(workdir, 'damaged_checkpoints'))


def test_a_tree_that_does_not_fit_stops_every_host_and_moves_nothing(trained, tmp_path):
  """--allow_config_change with a wider model: the checkpoint is intact but does not fit; it is
  an error (before: 'damaged', moved aside, silently restarted from step 0)."""
  workdir = _copy(trained, tmp_path / 'w')
  res = _launch(workdir, {}, '--config.model.width_multiplier=0.25', '--allow_config_change')
  assert [r.returncode for r in res] == [1, 1], multiprocess.describe(res)
  errors = _errors(res)
  assert errors[0] == errors[1] and len(errors[0]) == 1, errors
  assert 'checkpoint step 6' in errors[0][0] and "does not fit this config's model" in \
      errors[0][0] and 'nothing was moved' in errors[0][0]
  assert _steps(workdir) == [3, 6]
  assert not os.path.exists(os.path.join(workdir, 'damaged_checkpoints'))


def test_a_stale_listing_on_one_host_restores_process_0s_step(trained, tmp_path):
  """Process 1 lists no checkpoints (NFS attribute cache after a requeue); process 0 lists and
  decides, so both resume step 6 and finish together (before: process 1 started from 0)."""
  workdir = _copy(trained, tmp_path / 'w')
  res = _launch(workdir, {1: 'stale_listing'})
  assert [r.returncode for r in res] == [0, 0], multiprocess.describe(res)
  assert f'Resumed from {workdir}/checkpoints at step 6' in res[0].stdout
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['checkpoint_step'] == 6


def test_process_0_unable_to_write_stops_every_host_with_its_error(tmp_path):
  """Process 0 cannot write the shared-workdir marker (a bucket it may not write): every
  process stops at once with process 0's error, before anything compiles."""
  workdir = str(tmp_path / 'w')
  res = _launch(workdir, {0: 'marker_unwritable'})
  assert [r.returncode for r in res] == [2, 2], multiprocess.describe(res)
  errors = _errors(res)
  assert errors[0] == errors[1] and len(errors[0]) == 1, errors
  assert 'Permission denied (injected)' in errors[0][0] and 'on process 0 of 2' in errors[0][0]
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


class _Reader:
  """Collects a process's stderr lines in a thread, so waiting for one has a timeout."""

  def __init__(self, proc):
    self.lines, self.queue = [], queue.Queue()
    self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
    self.thread.start()

  def _read(self, proc):
    for line in proc.stderr:
      self.queue.put(line)
    self.queue.put(None)

  def wait_for(self, prefix, timeout):
    while True:
      line = self.queue.get(timeout=timeout)
      assert line is not None, 'the process ended first:\n' + ''.join(self.lines)[-3000:]
      self.lines.append(line)
      if line.startswith(prefix):
        return

  def rest(self, timeout=60):
    self.thread.join(timeout)
    while not self.queue.empty():
      line = self.queue.get()
      if line is not None:
        self.lines.append(line)
    return ''.join(self.lines)


@pytest.mark.parametrize('num_processes', [1, 2])
def test_sigterm_during_the_final_evaluation_ends_every_process_at_once(trained, tmp_path,
                                                                        num_processes):
  """Training is finished (its checkpoint final); the evaluation is held at its start on every
  process (so the signal cannot race it) and SIGTERM is sent: each process exits 143 with one
  line saying the checkpoint is saved (before: JAX's preemption service swallowed it)."""
  workdir = _copy(trained, tmp_path / 'w')
  env = _faults({i: 'pause_at=Pretraining done' for i in range(num_processes)})
  port = multiprocess.free_port()
  procs = []
  for i in range(num_processes):
    flags = ([] if num_processes == 1 else [f'--coordinator_address=127.0.0.1:{port}',
                                            f'--num_processes={num_processes}',
                                            f'--process_id={i}'])
    procs.append(subprocess.Popen(
        [sys.executable, *_ARGS, f'--workdir={workdir}', *flags], cwd=multiprocess.ROOT,
        env=multiprocess.env_for(2, env(i)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True))
  try:
    readers = [_Reader(p) for p in procs]
    for r in readers:  # Every process reaches the evaluation and holds there.
      r.wait_for('FAULT: paused', timeout=240)
    for p in procs:
      p.send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=60)
    errs = [r.rest() for r in readers]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [143] * num_processes, errs
  assert all('SIGTERM during the final evaluation' in e and 'step 6 is saved' in e
             for e in errs), errs
  assert _steps(workdir) == [3, 6]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))


def _shards_args(data_dir):
  return ['--config.data.dataset=simclr_tiny_shards', f'--config.data.data_dir={data_dir}',
          '--config.data.cache=False', '--config.data.probe_train_split=probe',
          '--config.eval.knn_bank_size=100', '--config.train.check_finite_every_steps=1']


def test_corrupt_records_are_skipped_counted_on_every_host_and_the_bank_is_balanced(
    tfds_shards_dir, tmp_path):
  """2 processes read 4 train files holding 4 records that are not images: nobody crashes, both
  report the same count over all hosts; the kNN bank over 4 files of 250 records is exactly
  class-balanced by the labels stored in the files, and the same bank one process picks."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tiny_tfds  # pylint: disable=g-import-not-at-top
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluators import knn  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'w')
  res = _launch(workdir, {}, *_shards_args(tfds_shards_dir),
                '--config.data.max_corrupt_fraction=0.5')
  assert [r.returncode for r in res] == [0, 0], multiprocess.describe(res)
  results = json.load(open(os.path.join(workdir, 'results.json')))
  # 6 steps x 16 records per process = 3 epochs of its 32: each bad record met 2-4 times.
  assert 8 <= results['skipped_records'] <= 16, results['skipped_records']
  assert f'{results["skipped_records"]} undecodable record(s) skipped' in res[0].stdout
  bank = np.asarray(json.load(open(os.path.join(workdir, 'knn_bank.json')))['indices'])
  truth = tiny_tfds.stored_labels(tfds_shards_dir, tiny_tfds.SHARDS_NAME, 'probe')
  np.testing.assert_array_equal(np.bincount(truth[bank], minlength=5), [20] * 5)
  assert results['knn_bank']['per_class'] == [20, 20]
  config = test_config.get_config()
  config.data.dataset, config.data.data_dir = tiny_tfds.SHARDS_NAME, tfds_shards_dir
  one = knn.bank_indices(sources.split_labels(config, 'probe'), 100, 5)
  np.testing.assert_array_equal(bank, one)


def test_too_many_corrupt_records_stop_every_host_at_the_same_step(tfds_shards_dir, tmp_path):
  """Past data.max_corrupt_fraction every process stops with the same line, wherever the bad
  records are (some hosts read none)."""
  workdir = str(tmp_path / 'w')
  res = _launch(workdir, {}, *_shards_args(tfds_shards_dir),
                '--config.data.max_corrupt_fraction=0')
  assert [r.returncode for r in res] == [1, 1], multiprocess.describe(res)
  errors = _errors(res)
  assert errors[0] == errors[1] and len(errors[0]) == 1, errors
  assert 'failed to decode and were skipped' in errors[0][0]
  assert 'data.max_corrupt_fraction=0' in errors[0][0]
