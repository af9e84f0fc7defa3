"""bench/official_parity.py's pure parts: both sides get the same hyperparameters, the statistics
and tables, and the one-line error for a path that is no official checkout. No training, no
official checkout needed."""

import os
import subprocess
import sys

import pytest

from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import official_parity as op  # pylint: disable=g-import-not-at-top,wrong-import-position


def _as_dict(args, prefix):
  out = {}
  for a in args:
    assert a.startswith(prefix), a
    k, v = a[len(prefix):].split('=', 1)
    assert k not in out, f'{k} given twice'
    out[k] = v
  return out


def _field(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def test_both_sides_get_every_hyperparameter_with_the_same_value():
  hp = dict(op.HPARAMS, learning_rate=0.6, weight_decay=1e-6, num_proj_layers=3, image_size=28)
  ours = _as_dict(op.ours_overrides(hp, seed=2), '--config.')
  official = _as_dict(op.official_flags(hp), '--')
  assert set(op.MAPPING) == set(op.HPARAMS)
  for k, (our_key, flag) in op.MAPPING.items():
    assert ours[our_key] == official[flag] == str(hp[k]), k
  assert ours['seed'] == '2' and ours['data.dataset'] == official['dataset'] == op.DATASET
  # The official code's fixed behaviour, on our side.
  assert ours['aug.crop_area_min'] == '0.08' and ours['aug.flip'] == 'True'
  assert official['train_mode'] == 'pretrain' and official['use_tpu'] == 'False'


def test_our_overrides_name_real_fields_of_the_right_type():
  config = default.get_config()
  for key, value in _as_dict(op.ours_overrides(op.HPARAMS, 0), '--config.').items():
    current = _field(config, key)  # KeyError: no such field.
    if isinstance(current, bool):
      assert value in ('True', 'False'), key
    elif isinstance(current, (int, float)):
      float(value)
    assert not (isinstance(current, int) and not isinstance(current, bool) and '.' in value), key


def test_a_fractional_width_is_refused_for_the_official_side():
  with pytest.raises(ValueError, match='integer'):
    op.official_flags(dict(op.HPARAMS, width_multiplier=0.5))
  assert '--width_multiplier=2' in op.official_flags(dict(op.HPARAMS, width_multiplier=2.0))


def test_summary_and_table():
  s = op.summarize([0.90, 0.92, 0.94], [0.91, 0.93, 0.95])
  assert s['ours_mean'] == pytest.approx(0.92) and s['official_mean'] == pytest.approx(0.93)
  assert s['ours_std'] == pytest.approx(0.02) and s['diff'] == pytest.approx(-0.01)
  assert s['within_spread'] is True
  assert op.summarize([0.5, 0.5], [0.9, 0.9])['within_spread'] is False
  assert op.summarize([0.5], [0.6])['within_spread'] is None
  md = op.markdown_table([0.90, 0.92, 0.94], [0.91, 0.93, 0.95])
  assert '| simclr_jax | 92.00 +- 2.00 | 90.00 92.00 94.00 |' in md
  assert '-1.00 points; within the seed spread: yes' in md


def test_loss_table_uses_common_steps_and_averages_runs():
  ours = [{1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0}, {1: 12.0, 2: 11.0, 3: 10.0, 4: 9.0}]
  official = [{1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0, 5: 1.0}]
  rows = op.loss_table(ours, official, points=2)
  assert [r[0] for r in rows] == [1, 4]  # Step 5: official only.
  assert rows[0][1:] == (11.0, 10.0)
  assert rows[1][1] == pytest.approx(9.0)  # Steps 2-4 of both runs: mean of 9, 8, 7, 11, 10, 9.
  assert op.loss_table([{1: 1.0}], [{2: 1.0}], 3) == []


def test_official_checkout_is_found_or_refused_in_one_line(tmp_path):
  tf2 = tmp_path / 'simclr' / 'tf2'
  tf2.mkdir(parents=True)
  (tf2 / 'run.py').write_text('')
  (tf2 / 'model.py').write_text('')
  assert op.official_run_py(str(tmp_path / 'simclr')) == str(tf2 / 'run.py')
  assert op.official_run_py(str(tf2)) == str(tf2 / 'run.py')
  with pytest.raises(ValueError, match='has no tf2/run.py'):
    op.official_run_py(str(tmp_path))
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'official_parity.py'),
                      f'--official={tmp_path}'], capture_output=True, text=True, timeout=60)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      f'error: --official={tmp_path} has no tf2/run.py: pass a clone of '
      'https://github.com/google-research/simclr']


def test_missing_tf_keras_names_the_package(monkeypatch):
  real = op.importlib.util.find_spec
  monkeypatch.setattr(op.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'tf_keras' else real(name, *a))
  with pytest.raises(ValueError, match=r'pip install "tf_keras~=\d+\.\d+\.0"'):
    op.check_tf_keras()
