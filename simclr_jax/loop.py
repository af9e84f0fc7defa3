"""The one training loop behind every job (pretraining, linear evaluation, fine-tuning).

It restores the workdir's latest checkpoint, then for each step: host-local batch -> global
arrays -> jitted step -> progress/scalars; checkpoints on a step cadence and at the end; optional
evaluations on a step cadence. Every decision that ends or pauses the job (checkpoint, eval,
stop on a non-finite loss, preemption) is taken by all hosts of a pod at the same step.

Preemption (how TPU VMs and most clusters stop a job): on SIGTERM the loop finishes the current
step, saves a checkpoint, waits until it is final and raises `Preempted`. With one process a
second SIGTERM exits at once; with several, JAX's preemption service (started by
jax.distributed) owns SIGTERM, agrees on the step (multihost_utils.reached_preemption_sync_point)
and ignores further SIGTERMs. After the last step is saved the jobs evaluate under
`exit_on_sigterm`: any SIGTERM then ends the process at once, on every host alike.

Training records that fail to decode are skipped (data/input_pipeline.skip_undecodable); the
loop counts them over all hosts on the finiteness cadence and stops every host at the same step
once more than data.max_corrupt_fraction of the records read since the (re)start were skipped.
"""

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections

from simclr_jax.checkpoints import checkpointing
from simclr_jax import cluster
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax.plan import utilization
from simclr_jax.cpu import xla_cpu


@dataclasses.dataclass
class Result:
  state: Any
  last_metrics: dict  # The latest progress report's metrics.
  train_seconds: float  # Wall clock of the loop, evaluations excluded.
  start_step: int  # 0, or the step a resume started from.
  skipped_records: int = 0  # Undecodable training records skipped since the (re)start, all hosts.


class Preempted(Exception):
  """The job saved a checkpoint at `step` and stopped on SIGTERM; rerun the command to resume."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'Preempted (SIGTERM): stopped after step {step} with a checkpoint of it in '
                     f'{directory}; rerun the same command to resume.')
    self.step = step


class CorruptDataError(RuntimeError):
  """More than data.max_corrupt_fraction of the training records read failed to decode."""


class SkipCounter:
  """Counts the training records this process's stream dropped (undecodable) from the gaps in
  the batches' 'seq' (positions in its stream from `first`), and sums them over all processes
  when asked, at a step every process asks at."""

  def __init__(self, first: int, max_fraction: float):
    self.first, self.max_fraction = first, max_fraction
    self.kept = self.read = self.skipped = 0  # This process; `skipped`: all processes.

  def take(self, batch: dict) -> dict:
    """The batch without 'seq' (it stays on the host)."""
    seq = batch.pop('seq', None)
    if seq is not None and len(seq):
      self.kept += len(seq)
      self.read = int(seq[-1]) - self.first + 1
    return batch

  def agree(self, step: int) -> int:
    """Records skipped on all processes so far (a collective); raises CorruptDataError on every
    process alike when they exceed max_fraction of the records read."""
    self.skipped, read = cluster.sum_over_processes([self.read - self.kept, self.read])
    if self.skipped > self.max_fraction * read:
      raise CorruptDataError(
          f'{self.skipped} of the {read} training records read since the (re)start failed to '
          f'decode and were skipped (by step {step}), more than '
          f'data.max_corrupt_fraction={self.max_fraction}: check or re-prepare the data set, or '
          'raise --config.data.max_corrupt_fraction to train past them.')
    return self.skipped


class exit_on_sigterm:  # pylint: disable=invalid-name  # A context manager, used as a function.
  """Within it, the first SIGTERM ends the process at once with exit status 143 and `message`
  on stderr, on one process or several (JAX's preemption service would otherwise swallow it).

  For the evaluation after training: its checkpoint is final, so there is nothing to save. A
  watcher thread reads the signal from Python's wakeup fd, so the exit does not wait for the
  main thread, which may sit in a collective of a host that already exited.
  """

  def __init__(self, message: str):
    self.message = message
    self.active = threading.current_thread() is threading.main_thread()

  def __enter__(self):
    if not self.active:
      return self
    self.read_fd, self.write_fd = os.pipe()
    os.set_blocking(self.write_fd, False)
    self.previous = signal.signal(signal.SIGTERM, lambda *_: None)
    self.previous_fd = signal.set_wakeup_fd(self.write_fd)
    threading.Thread(target=self._watch, daemon=True, name='exit_on_sigterm').start()
    return self

  def _watch(self):
    while True:
      try:
        got = os.read(self.read_fd, 64)
      except OSError:
        return
      if not got:
        return
      if signal.SIGTERM in got:
        print(self.message, file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)  # pylint: disable=protected-access

  def __exit__(self, *exc):
    if not self.active:
      return
    signal.set_wakeup_fd(self.previous_fd)
    # A handler installed outside Python (JAX's) cannot be put back: the job is ending anyway.
    signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
    os.close(self.write_fd)  # The watcher's read ends.
    os.close(self.read_fd)


class _SigtermWatch:
  """Turns the first SIGTERM into a request to stop at a step boundary; a second one exits now.

  Single process: a Python handler. Several processes: JAX's preemption service owns SIGTERM and
  every process asks it at every step whether this is the agreed step to stop.
  """

  def __init__(self):
    self.requested = False
    self.previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      print('Second SIGTERM: exiting at once, without a checkpoint.', file=sys.stderr, flush=True)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.requested = True
    print('SIGTERM: finishing the current step, then saving a checkpoint and exiting (send it '
          'again to exit at once).', file=sys.stderr, flush=True)

  def stop_at(self, done: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(done)
    return self.requested


def restore(config: ml_collections.ConfigDict, workdir: str, state: Any):
  """(manager, state restored from the workdir's latest checkpoint or `state`, its step)."""
  mngr = checkpointing.manager(workdir, keep=config.train.keep_checkpoints)
  state, start = checkpointing.restore_latest(mngr, state)
  if start:
    progress.say(f'Resumed from {workdir}/checkpoints at step {start}.')
  return mngr, state, start


def run(config: ml_collections.ConfigDict, workdir: str, *, mngr, state: Any, start: int,
        total: int, step_fn: Callable, batches: Callable[[int], Iterator], mesh, writer,
        loss_key: str, describe: Callable[[dict], str], unit: str = 'img/s',
        eval_fn: Optional[Callable[[Any, int], Any]] = None, eval_every: int = 0) -> Result:
  """Steps `start`..`total`-1 of `step_fn(state, global_batch) -> (state, metrics)`.

  `batches(start)` yields host-local batches from step `start`; `eval_fn(state, step)` runs
  every `eval_every` steps except the last (the caller evaluates the final state); its time is
  left out of img/s, ETA and train_seconds.
  """
  t = config.train
  report = progress.Reporter(
      writer, total=total, start=start, batch_size=t.batch_size,
      every_seconds=t.log_every_seconds, loss_key=loss_key, describe=describe, unit=unit,
      check_every=t.check_finite_every_steps, num_devices=mesh.size)
  data = batches(start)
  watch = _SigtermWatch()
  profile = _Profile(t.get('profile_steps', 0), start, total, workdir)
  skips = SkipCounter(start * t.batch_size // jax.process_count(),
                      config.data.get('max_corrupt_fraction', 0.0))
  try:
    with watch:
      for step in range(start, total):
        batch = sharding.global_batch(skips.take(next(data)), mesh)
        if step == start:
          _measure_utilization(report, step_fn, state, batch, mesh)
        profile.before(step)
        state, metrics = step_fn(state, batch)
        profile.after(step, state)
        report.step_done(step, metrics)
        done = step + 1
        preempted = watch.stop_at(done)
        save = done % t.checkpoint_every_steps == 0 or done == total or preempted
        if save or done % report.check_every == 0:  # The same steps on every host.
          if skips.agree(done):
            report.note = f'{skips.skipped} undecodable record(s) skipped'
        if save:
          report.check_finite()  # Never save a NaN state over a good one.
          checkpointing.save(mngr, done, state)
        if preempted:
          mngr.wait_until_finished()
          mngr.close()
          raise Preempted(done, str(mngr.directory))
        if eval_every and done % eval_every == 0 and done != total:
          jax.block_until_ready(state)  # Queued training steps count as training, not eval.
          t_eval = time.time()
          eval_fn(state, done)
          report.exclude(time.time() - t_eval)
  except progress.NonFiniteLossError as e:
    mngr.wait_until_finished()
    good = mngr.latest_step()
    where = (f'the last good checkpoint is step {good} in {workdir}/checkpoints (to resume '
             'from it with a lower optim.learning_rate, add --allow_config_change)'
             if good is not None else 'no checkpoint was written before it')
    raise progress.NonFiniteLossError(f'{e} Stopped; {where}.', e.step) from None
  finally:
    profile.close()
    del data  # Ends the tf.data iterator (and its generator thread) before interpreter exit.
  seconds = report.seconds()
  mngr.wait_until_finished()
  mngr.close()
  return Result(state, report.last, seconds, start, skips.skipped)


def _measure_utilization(report: progress.Reporter, step_fn, state, batch, mesh) -> None:
  """Compiles the step once (jit's cache keeps it for the first call) to read XLA's FLOP count,
  and tells the reporter the peak it is measured against; says both once."""
  flops = utilization.step_flops(step_fn, state, batch)
  devices = list(mesh.devices.flat)
  pk = utilization.peak(devices)
  report.set_utilization(flops, pk.flops_per_second if pk else None)
  progress.say(utilization.describe(flops, pk, devices[0].device_kind))
  if devices[0].platform == 'cpu':
    progress.say(f'XLA:CPU convolutions: {xla_cpu.STATUS}.')


class _Profile:
  """`train.profile_steps` > 0: a JAX profiler trace of that many steps, starting two steps after
  the (re)start so compilation and the first dispatch stay out, written under
  `workdir/plugins/profile/` where TensorBoard's profile plugin finds it. Every process traces
  its own host (the plugin shows one row per host). Not clu.periodic_actions.Profile: that one
  stops the trace without waiting for the traced steps' device work (dispatch runs ahead, so
  the trace would miss it) and leaves it running if the run ends first; this one blocks on the
  state before stopping and closes on every exit."""

  def __init__(self, steps: int, start: int, total: int, workdir: str):
    steps = min(max(int(steps), 0), total - start)
    self.first = start + min(2, total - start - steps)
    self.last = self.first + steps - 1 if steps else -1
    self.workdir, self.active = workdir, False

  def before(self, step: int) -> None:
    if step == self.first and self.last >= self.first:
      jax.profiler.start_trace(self.workdir)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step == self.last:
      jax.block_until_ready(state)
      self.close()
      progress.say(f'Profiler: traced steps {self.first + 1}-{self.last + 1} into '
                   f'{self.workdir}/plugins/profile/ (open: tensorboard --logdir '
                   f'{self.workdir}, Profile tab; needs pip install tensorboard-plugin-profile).')

  def close(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
