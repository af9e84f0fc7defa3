"""Progress reporting shared by the training loops (pretraining, linear eval, fine-tuning).

Per-step metrics stay on device until a report is due (every `every_seconds`, the first and the
last step), so logging never stalls the dispatch queue; then they are fetched, averaged, written
as TensorBoard scalars and printed as one line with rate and ETA. The rate is measured between
two such fetches, i.e. between points where every dispatched step has finished, so it is the
device's throughput however far the host's dispatch ran ahead.

The loss is checked for NaN/inf on a fixed STEP cadence (`check_every` steps, and whenever the
loop asks, e.g. before a checkpoint), never on a host's wall-clock timer: the metrics are
replicated, so every host of a pod sees the same values and stops at the same step, instead of
one host raising while the others wait forever in the next collective.
"""

import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np


def say(msg: str) -> None:
  """Progress goes to stdout on process 0 (and to the absl log everywhere)."""
  logging.info(msg)
  if jax.process_index() == 0:
    print(msg, flush=True)


def table(rows: list[tuple[str, ...]]) -> list[str]:
  """Aligned text lines of `rows` (the first is the header, underlined): the first column
  left-aligned, the others right-aligned, as the jobs' final result tables print."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = []
  for i, row in enumerate(rows):
    lines.append('  ' + '  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                                  for j, (c, w) in enumerate(zip(row, widths))))
    if i == 0:
      lines.append('  ' + '  '.join('-' * w for w in widths))
  return lines


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; `step` is the first (1-based) step that produced it."""

  def __init__(self, msg: str, step: int):
    super().__init__(msg)
    self.step = step


class Reporter:
  """`step_done(step, metrics)` after each step; `last` holds the latest metrics, averaged over
  the steps since the previous report (the learning rate is the latest step's)."""

  def __init__(self, writer, *, total: int, start: int, batch_size: int, every_seconds: float,
               loss_key: str, describe: Callable[[dict[str, float]], str], unit: str = 'img/s',
               check_every: int = 1, num_devices: int = 1):
    self.writer, self.total, self.start, self.batch_size = writer, total, start, batch_size
    self.num_devices = max(int(num_devices), 1)
    self.step_flops = self.peak_flops = None  # set_utilization: MFU in reports when both known.
    self.every_seconds, self.loss_key, self.describe, self.unit = (every_seconds, loss_key,
                                                                   describe, unit)
    self.check_every = max(int(check_every), 1)
    self.pending: list[Any] = []  # Metrics not yet fetched, with their 1-based step.
    self.unreported: list[tuple[int, dict]] = []  # Fetched, not yet averaged into a report.
    self.nonfinite_step = None  # First step seen with a non-finite loss (same on every host).
    self.last: dict[str, float] = {}
    self.note = ''  # Appended to every progress line when set (e.g. skipped records).
    self.t_last = self.t_start = time.time()
    self.step_last = start

  def set_utilization(self, step_flops, peak_flops) -> None:
    """FLOPs of one step (all devices) and the devices' peak FLOP/s; either may be None."""
    self.step_flops, self.peak_flops = step_flops, peak_flops

  def _fetch(self) -> None:
    if not self.pending:
      return
    steps, metrics = zip(*self.pending)
    self.pending = []
    for done, m in zip(steps, jax.device_get(list(metrics))):
      if self.nonfinite_step is None and not np.isfinite(m[self.loss_key]):
        self.nonfinite_step = done
      self.unreported.append((done, m))

  def check_finite(self) -> None:
    """Raises NonFiniteLossError if any step so far had a non-finite loss. Deterministic across
    hosts when called at the same step on each (the loop calls it on a step cadence)."""
    self._fetch()
    if self.nonfinite_step is not None:
      raise NonFiniteLossError(
          f'{self.loss_key} became non-finite at step {self.nonfinite_step}; lower '
          'optim.learning_rate or check the data.', self.nonfinite_step)

  def step_done(self, step: int, metrics: Any) -> None:
    """`step` is the 0-based index of the step just dispatched."""
    done = step + 1
    self.pending.append((done, metrics))
    if done % self.check_every == 0 or done == self.total:
      self.check_finite()
    now = time.time()
    first = step == self.start
    if not (done == self.total or first or now - self.t_last >= self.every_seconds):
      return
    self._fetch()  # A host-local decision: it may print, never stop (see check_finite).
    # Steps run asynchronously: dispatch returns at once and the fetch above waited for every
    # step up to `done`. Read the clock after that wait, so that each interval holds exactly
    # the steps finished in it (read before it, the wait landed in the next interval: bursts
    # of 'fast' intervals followed by 'stalled' ones whenever the host ran ahead).
    now = time.time()
    fetched = [m for _, m in self.unreported]
    self.unreported = []
    last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    if 'learning_rate' in last:  # A schedule value, not a sample: report the current one.
      last['learning_rate'] = float(fetched[-1]['learning_rate'])
    rate = (done - self.step_last) * self.batch_size / max(now - self.t_last, 1e-9)
    eta = (self.total - done) * (now - self.t_start) / max(done - self.start, 1)
    last['images_per_sec'] = 0.0 if first else rate
    last['images_per_sec_per_device'] = last['images_per_sec'] / self.num_devices
    mfu = ''
    if self.step_flops and self.peak_flops:
      steps_per_s = rate / self.batch_size
      last['mfu'] = 0.0 if first else self.step_flops * steps_per_s / self.peak_flops
      mfu = f' MFU {100 * last["mfu"]:.1f}%'
    self.writer.write_scalars(done, {f'train/{k}': v for k, v in last.items()})
    say(f'[{done:>{len(str(self.total))}}/{self.total}] {self.describe(last)} '
        f'{rate:,.0f} {self.unit} ({rate / self.num_devices:,.0f}/device){mfu} '
        f'ETA {format_eta(eta)}' + (' (includes compilation)' if first else '')
        + (f'; {self.note}' if self.note else ''))
    self.last = last
    self.t_last, self.step_last = now, done

  def exclude(self, seconds: float) -> None:
    """Leave `seconds` (e.g. an evaluation) out of the rate and the ETA."""
    self.t_last += seconds
    self.t_start += seconds

  def seconds(self) -> float:
    return time.time() - self.t_start
