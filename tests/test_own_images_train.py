"""Your own images end to end (the README's walk-through): pretrain a few steps on an unlabelled
folder split with the probes on a labelled one, read directly (`folder:DIR`) and after prepare
(file-backed, per-process shards); load the checkpoint and embed your own files; preview the
augmentations of a folder.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import test as test_config
from simclr_jax import load
from simclr_jax import train
from simclr_jax.data import folder
from simclr_jax.data import packing
from simclr_jax.tools import preview_augmentations as preview
import own_images  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  return own_images.make_folder(str(tmp_path_factory.mktemp('images')))


def _config(dataset, data_dir=None):
  config = test_config.get_config()
  config.data.dataset, config.data.data_dir = dataset, data_dir
  config.data.train_split = 'unlabelled'  # Pretrain without labels ...
  config.data.probe_train_split = 'train'  # ... probe on the labelled split, score on 'test'.
  config.train.batch_size = 16
  config.train.steps = 3
  config.eval.batch_size = 16
  config.eval.knn_k = 5
  config.eval.probe_steps = 20
  config.eval.probe_batch_size = 16
  config.eval.baselines = False
  return config


def _check_results(results, dataset):
  assert results['dataset'] == dataset and results['checkpoint_step'] == 3
  assert results['examples_evaluated'] == own_images.NUM_TEST  # Every test image once.
  assert results['probe_train_split'] == 'train'
  assert results['linear_probe']['simclr']['num_train'] == own_images.NUM_TRAIN
  assert results['knn']['simclr']['num_train'] == own_images.NUM_TRAIN
  assert 0 <= results['linear_probe']['simclr']['top1'] <= 1
  assert np.isfinite(results['final_train_metrics']['contrast_loss'])
  assert results['final_train_metrics']['supervised_acc'] == 0.0  # No label was seen.


def test_pretrain_on_a_folder_directly_then_embed_your_own_files(images, tmp_path, capsys):
  dataset = f'folder:{images}'
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(_config(dataset), workdir)
  _check_results(results, dataset)
  out = capsys.readouterr().out
  assert (f"{dataset} 'unlabelled': {own_images.NUM_UNLABELLED} unlabelled images; 2 file(s) "
          'skipped: 1 broken symlink, 1 symlinked folder.') in out
  assert f"{dataset} 'train': {own_images.NUM_TRAIN} images in 3 classes (disc 14" in out
  assert f'({own_images.NUM_UNLABELLED} examples)' in out  # The progress line's data-set size.
  summary = json.load(open(os.path.join(workdir, folder.SUMMARY_FILE)))
  assert summary['classes'] == list(own_images.CLASSES)
  assert summary['splits']['train']['per_class'] == {'disc': 14, 'square': 14, 'stripes': 14}
  assert {s['file']: s['reason'].split(':')[0] for s in summary['splits']['train']['skipped']} \
      == own_images.BAD_TRAIN
  # The notebook's path: load the workdir, embed a few of your own files.
  enc = load.load_encoder(workdir)
  files = [f'{images}/test/{c}/img_00{i}.jpg' for c in own_images.CLASSES for i in (0, 2)]
  batch = np.stack([np.asarray(Image.open(f).convert('RGB').resize((32, 32))) for f in files])
  h = np.asarray(enc.embed(batch))
  assert h.shape[0] == 6 and h.ndim == 2 and np.all(np.isfinite(h))


def test_pretrain_on_the_prepared_set_from_per_process_file_shards(images, tmp_path):
  out = str(tmp_path / 'tfds')
  packing.prepare(images, out, 'my_shapes', image_size=16, num_processes=2, workers=2,
                  say=lambda m: None)
  config = _config('my_shapes', out)
  config.data.cache = False  # As a pod reads it: each process its own shards.
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  _check_results(results, 'my_shapes')
  assert results['skipped_records'] == 0  # Bad files never reached the TFRecords.


def test_preview_augmentations_of_a_folder(images, tmp_path):
  config = _config(f'folder:{images}')
  config.data.train_split = 'train'
  h, w = preview.write_preview(config, str(tmp_path / 'grid.png'), num_images=3, num_pairs=1)
  with Image.open(tmp_path / 'grid.png') as im:
    assert im.size == (w, h) and im.format == 'PNG'
