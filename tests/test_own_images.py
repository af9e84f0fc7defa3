"""Your own images: a folder of real files (tests/helpers/own_images.py, built with Pillow) read
directly (`folder:DIR`) and packed by prepare into a TFDS set; every bad kind of file is skipped
with its reason, every odd kind is converted as a viewer shows it, bad layouts are one error
line, and two real processes read the prepared set each example once per epoch.
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import test as test_config
from simclr_jax import cluster
from simclr_jax import data_check
from simclr_jax.data import decode
from simclr_jax.data import errors
from simclr_jax.data import folder
from simclr_jax.data import packing
from simclr_jax.data import sources
import multiprocess  # pylint: disable=g-bad-import-order
import own_images  # pylint: disable=g-bad-import-order

NAME = 'my_shapes'


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  return own_images.make_folder(str(tmp_path_factory.mktemp('images')))


@pytest.fixture(scope='module')
def prepared(images, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tfds_out'))
  lines = []
  summary = packing.prepare(images, out, NAME, image_size=16, num_processes=2, workers=2,
                            say=lines.append)
  return out, summary, lines


def _config(images):
  config = test_config.get_config()
  config.data.dataset = f'folder:{images}'
  config.data.train_split = 'unlabelled'
  config.data.probe_train_split = 'train'
  return config


def test_every_bad_file_is_skipped_with_its_reason_and_odd_ones_converted(images):
  train = folder.load_split(f'folder:{images}', 'train', 16)
  assert {f: k for f, k, _ in train.skipped} == own_images.BAD_TRAIN
  assert len(train.files) == own_images.NUM_TRAIN and train.labelled
  assert train.classes == own_images.CLASSES  # Sorted folder names.
  np.testing.assert_array_equal(np.bincount(train.labels), [14, 14, 14])
  assert list(train.files) == sorted(train.files)  # Stored order: sorted paths.
  for path, change in own_images.CONVERTED.items():
    assert path in train.files
    assert any(change in k for k in train.changes), (path, train.changes)
  unlabelled = folder.load_split(f'folder:{images}', 'unlabelled', 16)
  assert not unlabelled.labelled and set(unlabelled.labels) == {-1}
  assert len(unlabelled.files) == own_images.NUM_UNLABELLED
  assert 'linked.jpg' in unlabelled.files  # A symlink to a file is read ...
  assert 'nested/deeper/u_000.png' in unlabelled.files  # ... and nesting is not a class.
  assert {f: k for f, k, _ in unlabelled.skipped} == own_images.BAD_UNLABELLED


def test_converted_pixels_are_what_a_viewer_shows_and_tf_decodes_them(images):
  def tf_pixels(rel):
    n = decode.normalize(open(f'{images}/train/{rel}', 'rb').read())
    px = tf.io.decode_image(n.data, channels=3, expand_animations=False).numpy()
    assert px.shape == (n.height, n.width, 3) and px.dtype == np.uint8
    return n, px

  n, px = tf_pixels('stripes/rotated.jpg')  # Stored 24x40 (h x w), EXIF orientation 6.
  assert (n.height, n.width) == own_images.ROTATED_STORED[::-1]
  expected = np.rot90(own_images.rotated_stored(), k=-1)  # 90 degrees clockwise, as shown.
  assert np.abs(px.astype(int) - expected).mean() < 8
  assert px[:, -3:, 0].mean() > 200 and px[:, :3, 2].mean() > 200  # Red right, blue left.
  _, px = tf_pixels('square/alpha.png')
  assert px[:, :10].min() == 255  # The transparent band is white, not black.
  _, px = tf_pixels('stripes/deep16.png')  # 16-bit: scaled to 8 bits, not clipped at 255.
  original = own_images.shape_image(2, 92, (30, 30))[..., 2]
  np.testing.assert_array_equal(px[..., 0], original)
  _, px = tf_pixels('disc/cmyk.jpg')
  assert np.abs(px.astype(int) - own_images.shape_image(0, 95, (32, 28))).mean() < 12
  for rel in ('disc/grey.jpg', 'square/palette.png'):
    _, px = tf_pixels(rel)
    assert px.shape[-1] == 3
  clean = open(f'{images}/train/disc/img_000.jpg', 'rb').read()
  assert decode.normalize(clean).data == clean  # Nothing to change: kept byte for byte.
  small = decode.normalize(open(f'{images}/train/disc/img_001.png', 'rb').read(), max_side=16)
  assert max(small.height, small.width) == 16 and small.changes[0].startswith('downscaled')


def test_prepare_writes_a_tfds_set_that_tfds_and_training_read(images, prepared):
  out, summary, lines = prepared
  path = f'{out}/{NAME}/1.0.0'
  assert summary['path'] == path and sorted(os.listdir(f'{out}/{NAME}')) == ['1.0.0']
  builder = tfds.builder_from_directory(path)
  assert builder.info.features['label'].names == list(own_images.CLASSES)
  assert builder.info.supervised_keys == ('image', 'label')  # as_supervised readers (official run.py).
  splits = builder.info.splits
  assert {s: splits[s].num_examples for s in splits.keys()} == {
      'train': own_images.NUM_TRAIN, 'test': own_images.NUM_TEST,
      'unlabelled': own_images.NUM_UNLABELLED}
  for s in splits.keys():
    assert splits[s].num_shards == 2  # >= --num_processes=2, one file per process.
  assert any('-> 2 shard(s) for --num_processes=2 (each of the 2 process(es) reads 1 file(s))'
             in l for l in lines), lines
  # The same files, order and labels as the direct mode: sorted paths within the split.
  direct = folder.load_split(f'folder:{images}', 'train', 16)
  stored = [(ex['file_name'].decode(), int(ex['label'])) for ex in tfds.as_numpy(
      sources.stored_order(builder, 'train'))]
  assert stored == list(zip(direct.files, direct.labels.tolist()))
  # Skipped files: the same list, with reasons, in a file beside the data.
  rows = [l.split('\t') for l in open(f'{path}/{packing.SKIPPED_FILE}').read().splitlines()[1:]]
  assert {(s, f, r.split(':')[0]) for s, f, r in rows} == (
      {('train', f, k) for f, k in own_images.BAD_TRAIN.items()} |
      {('unlabelled', f, k) for f, k in own_images.BAD_UNLABELLED.items()})
  assert any(l.startswith(f'Wrote {path}: 91 images') and '9 file(s) skipped' in l
             for l in lines), lines
  # The project's TFDS path reads it by name, with sizes and classes for the plan and the job.
  config = _config(images)
  config.data.dataset, config.data.data_dir = NAME, out
  info = sources.get_info(config)
  assert (info.num_train, info.num_eval, info.num_classes, info.num_probe_train) == (
      own_images.NUM_UNLABELLED, own_images.NUM_TEST, 3, own_images.NUM_TRAIN)


def test_prepare_refuses_existing_output_replaces_it_on_request_and_leaves_nothing_half_written(
    images, prepared, monkeypatch):
  out, _, _ = prepared
  with pytest.raises(packing.PrepareError, match='already holds my_shapes 1.0.0.*--overwrite'):
    packing.prepare(images, out, NAME, workers=1, say=lambda m: None)
  before = sorted(os.listdir(f'{out}/{NAME}/1.0.0'))

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # As Ctrl-C (or a crash) in the middle of writing.

  monkeypatch.setattr(packing, '_write_split', interrupted)
  with pytest.raises(KeyboardInterrupt):
    packing.prepare(images, out, NAME, overwrite=True, workers=1, say=lambda m: None)
  monkeypatch.undo()
  assert sorted(os.listdir(f'{out}/{NAME}')) == ['1.0.0']  # No temporary directory left ...
  assert sorted(os.listdir(f'{out}/{NAME}/1.0.0')) == before  # ... and the old set untouched.
  os.makedirs(f'{out}/{NAME}/{packing.INCOMPLETE}killed/junk')  # As after a kill -9.
  lines = []
  packing.prepare(images, out, NAME, image_size=16, num_processes=2, overwrite=True, workers=1,
                  say=lines.append)
  assert any('interrupted prepare' in l for l in lines) and any('Replaced' in l for l in lines)
  assert sorted(os.listdir(f'{out}/{NAME}')) == ['1.0.0']
  assert tfds.builder(NAME, data_dir=out).info.splits['train'].num_examples == own_images.NUM_TRAIN


def test_two_processes_read_each_prepared_example_once_per_epoch(prepared, tmp_path):
  out, _, _ = prepared
  res = multiprocess.launch(
      lambda i: ['tests/helpers/mp_read_prepared.py', f'--data_dir={out}', f'--name={NAME}',
                 '--split=unlabelled', f'--out={tmp_path}/read_{i}.json'],
      num_processes=2, devices_per_process=1, timeout=240)
  assert all(r is not None and r.returncode == 0 for r in res), multiprocess.describe(res)
  builder = tfds.builder(NAME, data_dir=out)
  every = [hashlib.sha256(ex['image']).hexdigest() for ex in tfds.as_numpy(
      sources.stored_order(builder, 'unlabelled'))]
  assert len(set(every)) == own_images.NUM_UNLABELLED
  reads = [json.load(open(tmp_path / f'read_{i}.json')) for i in range(2)]
  assert [r['process'] for r in reads] == [0, 1] and reads[0]['of'] == 2
  for epoch in range(2):
    mine = [r['epochs'][epoch] for r in reads]
    assert mine[0] and mine[1]  # Both processes read.
    assert sorted(mine[0] + mine[1]) == sorted(every), f'epoch {epoch}'  # Each exactly once.
  assert reads[0]['epochs'][0] != reads[0]['epochs'][1]  # Reshuffled every epoch.


def test_processes_that_see_other_files_stop_before_training(images, monkeypatch):
  """A host whose copy of the folder differs (a file missing, another label) is refused on every
  process: the job compares a digest of the kept names and labels."""
  config = _config(images)
  mine = folder.fingerprint(sources.folder_splits(config))
  monkeypatch.setattr(cluster, 'gather_texts', lambda text: [text, text, 'f00d', text])
  with pytest.raises(cluster.ClusterError, match=r'process\(es\) \[2\] see other files'):
    data_check.check_same_files(config)
  monkeypatch.setattr(cluster, 'gather_texts', lambda text: [text, text])
  data_check.check_same_files(config)
  train = folder.load_split(f'folder:{images}', 'train', 16)
  changed = dataclasses.replace(train, labels=np.roll(train.labels, 1))
  assert folder.fingerprint([changed]) != folder.fingerprint([train])
  assert mine == folder.fingerprint(sources.folder_splits(config))


def _layout(root, files):
  for rel in files:
    os.makedirs(os.path.dirname(f'{root}/{rel}'), exist_ok=True)
    if rel.endswith('.png'):
      own_images.save(f'{root}/{rel}', own_images.shape_image(0, 1, (24, 24)), 'PNG')
    elif not rel.endswith('/'):
      open(f'{root}/{rel}', 'w').write('not an image')


def test_bad_layouts_are_input_errors(tmp_path, images):
  config = _config(images)
  config.data.dataset = f'folder:{tmp_path}/nowhere'
  with pytest.raises(errors.DataConfigError, match=r"config.data.dataset='folder:.*nowhere' is "
                     r'invalid: .* is not a folder; allowed: folder:DIR'):
    sources.get_info(config)
  config.data.dataset = f'folder:{images}'
  config.data.eval_split = 'validation'
  with pytest.raises(errors.DataConfigError, match=r"config.data.eval_split='validation' is not a"
                     r" split of folder:.*; allowed: \['test', 'train', 'unlabelled'\]"):
    sources.get_info(config)
  root = tmp_path / 'bad'
  _layout(root, ['train/a/x.png', 'train/b/notes.txt', 'test/a/x.png', 'test/b/x.png',
                 'unlabelled/.DS_Store', 'unlabelled/readme.txt', 'unlabelled/sub/'])
  config = _config(str(root))
  with pytest.raises(errors.DataConfigError, match=r"config.data.train_split='unlabelled' of "
                     r'folder:.* holds no usable image \(2 file\(s\) skipped: 1 hidden file, '
                     r'1 not an image file\)'):
    sources.get_info(config)
  config.data.train_split = 'test'
  with pytest.raises(errors.DataConfigError, match=r"config.data.probe_train_split='train' of "
                     r".* is labelled .* class folder\(s\) \['b'\] hold no usable image"):
    sources.get_info(config)
  with pytest.raises(packing.PrepareError, match=r"split 'train' is labelled .* \['b'\]"):
    packing.prepare(str(root), str(tmp_path / 'out'), 'bad', workers=1, say=lambda m: None)
  assert not os.path.exists(tmp_path / 'out' / 'bad' / '1.0.0')
  assert os.listdir(tmp_path / 'out' / 'bad') == []  # The temporary directory is removed.
  with pytest.raises(packing.PrepareError, match=r"--name='Bad-Name' is invalid"):
    packing.prepare(str(root), str(tmp_path / 'out'), 'Bad-Name', say=lambda m: None)


def test_cli_error_lines_exit_2_before_anything_compiles(tmp_path):
  root = tmp_path / 'images'
  _layout(root, ['train/a/x.png', 'train/empty/', 'test/a/x.png'])
  workdir = tmp_path / 'run'
  r = subprocess.run(
      [sys.executable, '-m', 'simclr_jax.main', '--config=configs/test.py',
       f'--config.data.dataset=folder:{root}', f'--workdir={workdir}'],
      cwd=multiprocess.ROOT, env=multiprocess.env_for(8), capture_output=True, text=True,
      timeout=180)
  errors_ = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert r.returncode == 2 and len(errors_) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert "config.data.train_split='train'" in errors_[0] and "['empty']" in errors_[0]
  assert not workdir.exists()
  r = subprocess.run(
      [sys.executable, '-m', 'simclr_jax.prepare', f'--images={tmp_path}/none',
       f'--out={tmp_path}/out'], cwd=multiprocess.ROOT, env=multiprocess.env_for(1),
      capture_output=True, text=True, timeout=120)
  errors_ = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert r.returncode == 2 and len(errors_) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert f"--images='{tmp_path}/none' is not a folder; allowed:" in errors_[0]
