"""Progress reporting shared by the training loops (pretraining, linear eval, fine-tuning).

Per-step metrics stay on device until a report is due (every `every_seconds`, the first and the
last step), so logging never stalls the dispatch queue; then they are fetched, averaged, checked
for NaN, written as TensorBoard scalars and printed as one line with rate and ETA.
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


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class Reporter:
  """`step_done(step, metrics)` after each step; `last` holds the latest metrics, averaged over
  the steps since the previous report (the learning rate is the latest step's)."""

  def __init__(self, writer, *, total: int, start: int, batch_size: int, every_seconds: float,
               loss_key: str, describe: Callable[[dict[str, float]], str], unit: str = 'img/s'):
    self.writer, self.total, self.start, self.batch_size = writer, total, start, batch_size
    self.every_seconds, self.loss_key, self.describe, self.unit = (every_seconds, loss_key,
                                                                   describe, unit)
    self.pending: list[Any] = []
    self.last: dict[str, float] = {}
    self.t_last = self.t_start = time.time()
    self.step_last = start

  def step_done(self, step: int, metrics: Any) -> None:
    """`step` is the 0-based index of the step just dispatched."""
    self.pending.append(metrics)
    now = time.time()
    done = step + 1
    first = step == self.start
    if not (done == self.total or first or now - self.t_last >= self.every_seconds):
      return
    fetched = jax.device_get(self.pending)
    self.pending = []
    last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    if 'learning_rate' in last:  # A schedule value, not a sample: report the current one.
      last['learning_rate'] = float(fetched[-1]['learning_rate'])
    if not np.isfinite(last[self.loss_key]):
      raise FloatingPointError(f'{self.loss_key} became {last[self.loss_key]} at step {done}; '
                               'lower optim.learning_rate or check the data.')
    rate = (done - self.step_last) * self.batch_size / max(now - self.t_last, 1e-9)
    eta = (self.total - done) * (now - self.t_start) / max(done - self.start, 1)
    last['images_per_sec'] = 0.0 if first else rate
    self.writer.write_scalars(done, {f'train/{k}': v for k, v in last.items()})
    say(f'[{done:>{len(str(self.total))}}/{self.total}] {self.describe(last)} '
        f'{rate:,.0f} {self.unit} ETA {format_eta(eta)}'
        + (' (includes compilation)' if first else ''))
    self.last = last
    self.t_last, self.step_last = now, done

  def exclude(self, seconds: float) -> None:
    """Leave `seconds` (e.g. an evaluation) out of the rate and the ETA."""
    self.t_last += seconds
    self.t_start += seconds

  def seconds(self) -> float:
    return time.time() - self.t_start
