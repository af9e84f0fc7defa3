"""simclr_jax.sweep: study validation, resumability, the CSV and the figures, with a fake runner
that writes results.json files instead of training (no model is trained here).

References: hand-written results.json contents and the study files' own grids.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

from simclr_jax import sweep
from simclr_jax.evaluators import sweep_figures

_STUDY = '''
from configs.ablations import base

def get_config():
  return base.get_config()

def get_sweep():
  return [('a', {{'aug.color_jitter_strength': 0.0}}), ('b', {{'{key}': {value}}})]

FIGURE = {figure!r}
'''


def _study(tmp_path, key='aug.use_blur', value='True', figure='table', body=None):
  path = tmp_path / 'study.py'
  path.write_text(body if body is not None else _STUDY.format(key=key, value=value,
                                                                 figure=figure))
  return str(path)


def _results(top1, loss=5.0):
  return {'linear_probe': {'simclr': {'top1': top1, 'top5': 0.9}},
          'knn': {'simclr': {'top1': top1 - 0.1}}, 'online_probe': {'top1': top1 - 0.2},
          'final_train_metrics': {'contrast_loss': loss, 'contrast_acc': 0.5},
          'checkpoint_step': 3, 'train_seconds': 1.0, 'wall_clock_seconds': 2.0}


class FakeRunner:
  """Records the commands; writes results.json (top-1 from `scores`) unless told to fail."""

  def __init__(self, scores, fail=()):
    self.scores, self.fail, self.calls = scores, fail, []

  def __call__(self, argv, env, log_path):
    workdir = next(a.split('=', 1)[1] for a in argv if a.startswith('--workdir='))
    name = os.path.basename(workdir)
    self.calls.append((name, argv, env))
    if name in self.fail:
      with open(log_path, 'a', encoding='utf-8') as f:
        f.write('Traceback...\nerror: config.loss.type=\'x\' is invalid; allowed: ...\n')
      return 2
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'results.json'), 'w', encoding='utf-8') as f:
      json.dump(_results(self.scores[name]), f)
    return 0


@pytest.mark.parametrize('key,value,match', [
    ('aug.use_blurr', 'True', "no key 'aug.use_blurr'"),
    ('augs.use_blur', 'True', "no key 'augs.use_blur'"),
    ('aug', 'True', "no key 'aug'"),
    ('aug.use_blur', "'yes'", 'aug.use_blur'),
    ('model.proj_head_mode', "'deep'", 'proj_head_mode'),
])
def test_bad_override_is_one_error_before_any_run(tmp_path, key, value, match):
  runner = FakeRunner({'a': 0.5, 'b': 0.6})
  with pytest.raises(sweep.StudyError, match=match):
    sweep.run_study(_study(tmp_path, key, value), str(tmp_path / 'out'), runner=runner)
  assert not runner.calls


def test_study_without_get_sweep(tmp_path):
  path = _study(tmp_path, body='def get_config():\n  return None\n')
  with pytest.raises(sweep.StudyError, match='no get_sweep'):
    sweep.load_study(path)


def test_cli_error_line_and_exit_2(tmp_path):
  out = tmp_path / 'out'
  p = subprocess.run([sys.executable, '-m', 'simclr_jax.sweep',
                      f'--config={_study(tmp_path, "loss.typo", "1")}', f'--workdir={out}'],
                     capture_output=True, text=True, check=False)
  assert p.returncode == 2, p.stderr
  errors = [l for l in p.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and "no key 'loss.typo'" in errors[0], p.stderr
  assert not out.exists()  # Nothing was run or written.


def test_runs_skip_done_continue_after_failure_and_resume(tmp_path):
  study, out = _study(tmp_path), tmp_path / 'out'
  lines = []
  runner = FakeRunner({'a': 0.5, 'b': 0.7}, fail=('b',))
  assert sweep.run_study(study, str(out), runner=runner, say=lines.append) == 1
  assert [c[0] for c in runner.calls] == ['a', 'b']
  argv, env = runner.calls[1][1], runner.calls[1][2]
  assert argv[1:3] == ['-m', 'simclr_jax.main'] and '--config.aug.use_blur=True' in argv
  assert env['JAX_COMPILATION_CACHE_DIR'] == str(out / '.jax_cache')
  assert lines[0].startswith('[1/2] a: ') and 'linear top-1 0.500' in lines[0]
  assert lines[1].startswith('[2/2] b: FAILED (exit 2)') and "error: config.loss.type='x'" in \
      lines[1] and str(out / 'logs' / 'b.log') in lines[1]
  # Rerun: 'a' has results.json and is skipped; 'b' runs again and now succeeds.
  lines.clear()
  runner = FakeRunner({'a': 0.5, 'b': 0.7})
  assert sweep.run_study(study, str(out), runner=runner, say=lines.append) == 0
  assert [c[0] for c in runner.calls] == ['b']
  assert lines[0] == '[1/2] a: done before (results.json), linear top-1 0.500'
  with open(out / 'results.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == ['a', 'b']
  assert rows[1]['aug.use_blur'] == 'True' and float(rows[1]['linear_top1']) == 0.7
  assert float(rows[0]['knn_top1']) == pytest.approx(0.4)
  assert json.loads(rows[0]['overrides']) == {'aug.color_jitter_strength': 0.0}
  assert '| b | ' in (out / 'table.md').read_text() and (out / 'figure.png').stat().st_size > 1000


def test_heatmap_mirrors_and_bars_broadcast(tmp_path):
  import importlib  # pylint: disable=g-import-not-at-top
  fig5 = importlib.import_module('configs.ablations.fig5_augmentation_pairs')
  runs = fig5.get_sweep()
  assert len(runs) == 21 and runs[0] == ('crop', {'aug.crop': True})
  rows = [{'name': n, 'overrides': o, 'linear_top1': 0.01 * k} for k, (n, o) in enumerate(runs)]
  rows[1]['linear_top1'] = None  # crop+cutout not run yet.
  labels, grid = sweep_figures.heatmap_grid(rows, fig5.FIGURE)
  i, j = labels.index('crop'), labels.index('colour')
  assert grid[i][j] == grid[j][i] == 0.02 and grid[i][i] == 0.0
  assert grid[0][1] is None and grid[1][0] is None
  assert 'heatmap' in sweep_figures.draw(rows, fig5.FIGURE, str(tmp_path / 'h.png'))
  fig8 = importlib.import_module('configs.ablations.fig8_heads')
  rows = [{'name': n, 'overrides': o, 'linear_top1': 0.1 * k}
          for k, (n, o) in enumerate(fig8.get_sweep())]
  xs, series, values = sweep_figures.bar_groups(rows, fig8.FIGURE)
  assert xs == [32, 128, 512] and series == ['none', 'linear', 'nonlinear']
  assert values[('none', 512)] == 0.0 and values[('nonlinear', 128)] == pytest.approx(0.5)
  assert 'bars' in sweep_figures.draw(rows, fig8.FIGURE, str(tmp_path / 'b.png'))
  md = sweep_figures.table_markdown([dict(rows[0], linear_top1=None)], {'kind': 'table'})
  assert 'RESULT: pending' in md


@pytest.mark.parametrize('study', ['fig5_augmentation_pairs', 'table1_colour_strength',
                                   'table45_losses', 'fig8_heads'])
def test_shipped_studies_validate(study):
  _, runs, fig = sweep.load_study(f'configs/ablations/{study}.py')
  assert runs and fig['kind'] in sweep.FIGURES
