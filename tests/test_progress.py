"""The progress reporter: averages metrics between reports, reports the current learning rate,
writes scalars, and stops on a non-finite loss."""

import numpy as np
import pytest

from simclr_jax import progress


class _Writer:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, scalars))


def _metrics(loss, lr):
  return {'loss': np.float32(loss), 'learning_rate': np.float32(lr)}


def test_reports_first_and_last_step_with_means_and_current_lr(capsys):
  w = _Writer()
  r = progress.Reporter(w, total=4, start=0, batch_size=8, every_seconds=1e9, loss_key='loss',
                        describe=lambda m: f'loss {m["loss"]:.2f} lr {m["learning_rate"]:.2f}')
  for step, (loss, lr) in enumerate([(4.0, 0.0), (3.0, 0.1), (2.0, 0.2), (1.0, 0.3)]):
    r.step_done(step, _metrics(loss, lr))
  assert [s for s, _ in w.rows] == [1, 4]  # First step (compilation) and the last.
  last = w.rows[-1][1]
  assert last['train/loss'] == pytest.approx(2.0)  # Mean of steps 2..4.
  assert last['train/learning_rate'] == pytest.approx(0.3)  # The current value, not the mean.
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith('[1/4] loss 4.00') and out[0].endswith('(includes compilation)')
  assert out[1].startswith('[4/4] loss 2.00 lr 0.30')


def test_non_finite_loss_stops_with_the_step():
  r = progress.Reporter(_Writer(), total=3, start=0, batch_size=8, every_seconds=0.0,
                        loss_key='loss', describe=str)
  r.step_done(0, _metrics(1.0, 0.1))
  with pytest.raises(FloatingPointError, match='at step 2'):
    r.step_done(1, _metrics(np.nan, 0.1))


def test_format_eta():
  assert progress.format_eta(3725.9) == '1:02:05'
  assert progress.format_eta(-3) == '0:00:00'


def test_rate_per_device_and_mfu_from_flops_and_peak(capsys, monkeypatch):
  """MFU = step FLOPs x steps per second / peak: 3 steps of 8 images in 2 s at 1 GFLOP per step
  against a 3 GFLOP/s peak is 1.5 steps/s x 1e9 / 3e9 = 50%; 12 img/s over 4 devices is 3."""
  # init, one read per step, and one more after each report's fetch.
  clock = iter([0.0, 10.0, 10.0, 11.0, 11.5, 12.0, 12.0])
  monkeypatch.setattr(progress.time, 'time', lambda: next(clock))
  w = _Writer()
  r = progress.Reporter(w, total=4, start=0, batch_size=8, every_seconds=1e9, loss_key='loss',
                        describe=lambda m: 'x', num_devices=4)
  r.set_utilization(1e9, 3e9)
  for step in range(4):
    r.step_done(step, _metrics(1.0, 0.1))
  first, last = w.rows[0][1], w.rows[-1][1]
  assert first['train/mfu'] == 0.0  # The first report includes compilation.
  assert last['train/images_per_sec'] == pytest.approx(12.0)
  assert last['train/images_per_sec_per_device'] == pytest.approx(3.0)
  assert last['train/mfu'] == pytest.approx(0.5)
  assert capsys.readouterr().out.splitlines()[-1] == '[4/4] x 12 img/s (3/device) MFU 50.0% ETA 0:00:00'


def test_no_mfu_without_a_flop_count_or_a_peak(capsys):
  w = _Writer()
  r = progress.Reporter(w, total=1, start=0, batch_size=8, every_seconds=1e9, loss_key='loss',
                        describe=lambda m: 'x')
  r.set_utilization(1e9, None)
  r.step_done(0, _metrics(1.0, 0.1))
  assert 'train/mfu' not in w.rows[0][1]
  assert 'MFU' not in capsys.readouterr().out


def test_rate_counts_the_wait_for_steps_the_host_ran_ahead_of(monkeypatch):
  """Dispatch is asynchronous: the host dispatches a step in 0.2 s and moves on while the device
  takes 1 s per step, so the host runs ahead and waits only when a report fetches the metrics.
  Every report after the first must give the device's rate: the images of the steps finished
  since the previous report over the time between the two finishes (about 8 images / 1 s, a
  little less for the 0.2 s bubble after each wait), not a burst of host dispatch rate followed
  by a stall. Simulated: a clock, and metrics that carry the time their step finishes on the
  device; fetching them waits until then."""
  now = [0.0]

  def device_get(ms):
    now[0] = max([now[0]] + [float(m['finish']) for m in ms])
    return ms

  monkeypatch.setattr(progress.time, 'time', lambda: now[0])
  monkeypatch.setattr(progress.jax, 'device_get', device_get)
  w = _Writer()
  r = progress.Reporter(w, total=40, start=0, batch_size=8, every_seconds=3.0, loss_key='loss',
                        describe=lambda m: 'x', check_every=1000)
  device_free, finish = 0.0, {}
  for step in range(40):
    now[0] += 0.2  # Host: load and dispatch.
    device_free = finish[step + 1] = max(device_free, now[0]) + 1.0
    r.step_done(step, {'loss': np.float32(1.0), 'finish': device_free})
  done = [d for d, _ in w.rows]
  rates = [s['train/images_per_sec'] for _, s in w.rows[1:]]
  expected = [(b - a) * 8 / (finish[b] - finish[a]) for a, b in zip(done, done[1:])]
  assert len(rates) >= 3
  assert rates == pytest.approx(expected)
  assert min(rates) > 7.5 and max(rates) <= 8.0
