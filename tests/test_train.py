"""End to end: train_and_evaluate on 8 emulated devices writes checkpoints, TensorBoard events,
config.json, results.json and embeddings.png; the loss is finite and moves; the online probe and
kNN monitor cover every eval example exactly once, during pretraining and at the end; a rerun
resumes instead of restarting; a TFDS split without labels can be pretrained on, and cannot reach
a classifier.
"""

import glob
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import test as test_config
from simclr_jax.checkpoints import checkpointing
from simclr_jax.evaluators import feature_store
from simclr_jax.evaluators import linear_probe
from simclr_jax import train
from simclr_jax.evaluators import representations
from simclr_jax.data import sources
import tiny_tfds  # pylint: disable=g-bad-import-order


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
  config.train.profile_steps = 2
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
  assert on_disk['config_name'] == 'test' and on_disk['dataset'] == 'embedded_mnist'
  assert on_disk['eval_split'] == 'test' and on_disk['wall_clock_seconds'] > 0
  # eval.batch_size=1008 over 1000 test / 4000 train examples: padded batches, masked out.
  assert on_disk['examples_evaluated'] == 1000
  assert set(on_disk['knn']) == {'simclr', 'random_init', 'raw_pixels'}
  for r in on_disk['knn'].values():
    assert 0.0 <= r['top1'] <= r['top5'] <= 1.0
    assert (r['num_train'], r['num_eval'], r['k']) == (4000, 1000, config.eval.knn_k)
  # Raw MNIST pixels are a strong kNN baseline; any kNN here is far above chance (0.1).
  assert on_disk['knn']['raw_pixels']['top1'] > 0.7
  assert 0.0 <= on_disk['online_probe']['top1'] <= on_disk['online_probe']['top5'] <= 1.0
  assert [h['step'] for h in on_disk['eval_history']] == [6]  # eval_every_epochs=0: end only.
  final = on_disk['eval_history'][-1]
  assert final['knn_top1'] == on_disk['knn']['simclr']['top1']
  assert final['online_probe_top1'] == on_disk['online_probe']['top1']


def test_throughput_mfu_and_profiler_trace(trained):
  _, workdir, _ = trained
  last = max(_scalars(workdir, 'train/mfu').items())
  assert last[0] == 6 and 0.0 < last[1] < 1.0
  per_device = _scalars(workdir, 'train/images_per_sec_per_device')[6]
  assert per_device == pytest.approx(_scalars(workdir, 'train/images_per_sec')[6] / 8)
  # train.profile_steps=2: a trace TensorBoard's profile plugin reads.
  assert glob.glob(os.path.join(workdir, 'plugins', 'profile', '*', '*.xplane.pb'))


def test_eval_scalars_and_embeddings_plot(trained):
  config, workdir, results = trained
  for tag in ('eval/online_probe_top1', 'eval/online_probe_top5', 'eval/knn_top1',
              'eval/simclr_top1', 'eval/random_init_knn_top1'):
    assert list(_scalars(workdir, tag)) == [6], tag
  assert _scalars(workdir, 'eval/knn_top1')[6] == pytest.approx(results['knn']['simclr']['top1'])
  with Image.open(os.path.join(workdir, train.EMBEDDINGS_FILE)) as im:
    assert im.format == 'PNG'
    im.load()  # Decodes the whole image (raises on a truncated or corrupt file).
    assert im.size[0] >= 300 and im.size[1] >= 300
    pixels = np.asarray(im.convert('RGB'))
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # Not blank: points in colours.


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
  # One epoch is 4000 // 32 = 125 steps: evaluate after every step (step 7; step 8 is the end).
  config.train.eval_every_epochs = 1 / 125
  config.eval.batch_size = 56  # 7 per device; 1000 = 17 * 56 + 48 and 4000 = 71 * 56 + 24.
  # train.steps 6 -> 8 changes the schedule the checkpoints were trained with: allowed explicitly.
  results = train.train_and_evaluate(config, workdir, allow_config_change=True)
  out = capsys.readouterr().out
  assert 'Resumed from' in out
  assert '[eval @ step 7] online probe top-1' in out
  assert results['checkpoint_step'] == 8
  loss = _scalars(workdir, 'train/contrast_loss')
  assert 7 in loss and 8 in loss
  # The whole history across the restart: the first run's final evaluation (step 6) is kept.
  assert [h['step'] for h in results['eval_history']] == [6, 7, 8]
  assert json.load(open(os.path.join(workdir, representations.EVAL_HISTORY_FILE))) == \
      results['eval_history']
  for h in results['eval_history']:
    assert h['examples_evaluated'] == 1000  # Every test example exactly once.
  assert results['knn']['simclr']['num_train'] == 4000  # The whole train split is the bank.
  assert results['linear_probe']['simclr']['num_train'] == 4000
  assert set(_scalars(workdir, 'eval/knn_top1')) == {6, 7, 8}


@pytest.fixture(scope='module')
def unlabelled_dir(tmp_path_factory):
  """A prepared TFDS data_dir holding tiny_tfds's `simclr_tiny_unlabelled` (its 'unlabelled'
  split has label -1, as stl10's)."""
  return tiny_tfds.prepare(str(tmp_path_factory.mktemp('tfds_unlabelled')),
                           name=tiny_tfds.UNLABELLED_NAME)


def _unlabelled_config(data_dir):
  config = test_config.get_config()
  config.data.dataset = tiny_tfds.UNLABELLED_NAME
  config.data.data_dir = data_dir
  config.data.train_split = 'unlabelled'
  config.train.batch_size = 16
  config.train.steps = 3
  config.eval.batch_size = 16
  config.eval.knn_k = 10
  config.eval.probe_steps = 20
  config.eval.probe_batch_size = 16
  return config


def test_pretrain_on_an_unlabelled_tfds_split(unlabelled_dir, tmp_path):
  """The same job on a real on-disk TFDS set (varying image sizes, 5 classes, 23 test images that
  no batch size divides), pretrained on its 'unlabelled' split (label -1) as one would on stl10's:
  the online probe skips those examples, the kNN bank (a class-balanced subset) and the linear
  probes use the labelled 'train' split, and every eval example is scored once."""
  config = _unlabelled_config(unlabelled_dir)
  config.data.probe_train_split = 'train'
  config.eval.knn_bank_size = 10  # The first 2 of each of the 5 classes.
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['dataset'] == tiny_tfds.UNLABELLED_NAME
  assert results['examples_evaluated'] == 23
  assert results['probe_train_split'] == 'train'
  for name in ('simclr', 'random_init', 'raw_pixels'):
    assert results['linear_probe'][name]['num_train'] == tiny_tfds.N_TRAIN  # The whole split.
    assert results['linear_probe'][name]['num_eval'] == 23
    assert results['knn'][name]['num_train'] == 10
  last = results['final_train_metrics']
  assert last['supervised_loss'] == 0.0 and last['supervised_acc'] == 0.0  # No label was seen.
  assert np.isfinite(last['contrast_loss'])


def test_unlabelled_probe_split_fails_before_training(unlabelled_dir, tmp_path):
  config = _unlabelled_config(unlabelled_dir)  # No probe_train_split: the bank would be unlabelled.
  with pytest.raises(sources.UnlabelledError, match='probe_train_split') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert "'unlabelled'" in str(e.value) and 'found -1..-1' in str(e.value)
  assert not os.path.exists(tmp_path / 'checkpoints')
  assert not os.path.exists(tmp_path / 'config.json')


def test_knn_bank_label_pass_runs_once_per_run(tmp_path, monkeypatch):
  """The bank's label pass is kept in the workdir: a restart reads it instead of the split."""
  config = test_config.get_config()
  config.eval.knn_bank_size = 500
  info = sources.get_info(config)
  first, summary = representations.knn_bank(config, info, str(tmp_path))
  assert len(first) == 500 and summary['per_class'] == [50, 50]
  labels = feature_store.split_labels(config, 'train', 4000)
  np.testing.assert_array_equal(np.bincount(labels[first]), [50] * 10)
  monkeypatch.setattr(feature_store, 'split_labels', lambda *a, **k: pytest.fail('label pass rerun'))
  again, _ = representations.knn_bank(config, info, str(tmp_path))
  np.testing.assert_array_equal(again, first)
  config.unlock()
  config.eval.knn_bank_size = 300  # Another bank: the cache does not apply.
  monkeypatch.undo()
  assert len(representations.knn_bank(config, info, str(tmp_path))[0]) == 300


def test_final_probes_extract_only_the_probe_split_again(monkeypatch):
  """With a kNN bank subset the final linear probe needs the whole probe split's features; the
  eval split's come from the monitor (before: both splits were extracted, one thrown away)."""
  config = test_config.get_config()
  config.eval.baselines = False
  info = sources.DatasetInfo('embedded_mnist', 4000, 1000, 10, 4000)
  extracted = []
  monkeypatch.setattr(feature_store, 'extract_sharded',
                      lambda cfg, split, *a, **k: extracted.append(split) or split)
  monkeypatch.setattr(linear_probe, 'linear_probe_sharded', lambda train_, ev, **k: (train_, ev))
  probes, _ = representations.evaluate_representations(
      config, info, None, None, lambda v, x: {'features': x}, {}, {'eval': 'monitored eval',
                                                                   'knn': {}},
      bank_indices=np.arange(10))
  assert extracted == ['train']
  assert probes['simclr'] == ('train', 'monitored eval')
