"""load.load_encoder against a real pretraining run, and the notebook that uses it.

References: the TF eval pipeline (data/input_pipeline.eval_image) for the JAX preprocessing; the
training loop's own restore (checkpointing.restore of the whole TrainState) and the TF-fed
feature extraction (feature_store.extract) for the features; a Python with TensorFlow made
unimportable for the TF-free claim; nbclient for the notebook.
"""

import os
import subprocess
import sys
import textwrap
import time

import jax
import nbclient
import nbformat
import numpy as np
import pytest
from sklearn import datasets
import tensorflow as tf

from configs import test as test_config
from simclr_jax.checkpoints import checkpointing
from simclr_jax.evaluators import feature_store
from simclr_jax import linear_eval
from simclr_jax import load
from simclr_jax.checkpoints import encoder
from simclr_jax.data import eval_preprocess
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import sharding
from simclr_jax import train
from simclr_jax.data import embedded
from simclr_jax.data import input_pipeline
from simclr_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'load_checkpoint.ipynb')
# JAX's bicubic vs tf.image's (whose weights come from a 1/1024-step table), after the eval
# pipeline's rounding to uint8: measured at most 1 level, on at most 0.86% of the pixels (digits)
# and 0.40% (photos); before rounding at most 7.4e-4 in [0, 1].
MAX_LEVELS, MAX_FRACTION_OFF, MAX_FLOAT_DIFF = 1, 0.02, 1e-3


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 4-step run of configs/test.py (online probe on) with checkpoints at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = test_config.get_config()
  config.train.steps = 4
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_epochs = 0
  config.eval.baselines = False
  config.eval.probe_steps = 5
  config.eval.embedding_plot_points = 0
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def test_digits():
  return embedded.load('test')


def _real_images():
  """(name, uint8 [n, h, w, 3]): test digits, and the two photos scikit-learn ships (427 x 640)
  plus their transposes (a tall and a wide crop)."""
  photos = np.stack(datasets.load_sample_images().images)
  return [('digits', embedded.load('test')[0][::10]), ('photos', photos),
          ('photos_tall', np.ascontiguousarray(photos.transpose(0, 2, 1, 3)))]


@pytest.mark.parametrize('size', [16, 20, 32, 33, 64, 224])
def test_preprocess_matches_the_tf_eval_pipeline(size):
  """Crop (above 32 px) and resize as the eval pipeline, on real images, within the tolerance."""
  crop = size > 32
  config = test_config.get_config()
  config.data.image_size = size
  for name, images in _real_images():
    ref = np.stack([input_pipeline.eval_image(config, tf.constant(im)).numpy() for im in images])
    ours = np.asarray(eval_preprocess.preprocess(jax.numpy.asarray(images), size, crop))
    assert ours.shape == ref.shape == (len(images), size, size, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours * 255, np.round(ours * 255), atol=1e-4)  # uint8 levels.
    levels = np.abs(ours * 255 - ref.astype(np.float32))
    assert levels.max() <= MAX_LEVELS + 1e-3, (name, levels.max())
    assert np.mean(levels > 0.5) <= MAX_FRACTION_OFF, (name, np.mean(levels > 0.5))
    # Before rounding: the two bicubic resizes of the same crop.
    x = images.astype(np.float32) / 255
    if crop:
      top, left, ch, cw = eval_preprocess.eval_crop_box(x.shape[1], x.shape[2], size)
      x = x[:, top:top + ch, left:left + cw]
    tf_float = tf.image.resize(x, [size, size], method='bicubic').numpy()
    jax_float = np.asarray(jax.image.resize(x, (len(x), size, size, 3), 'bicubic',
                                            antialias=False))
    assert np.abs(np.clip(tf_float, 0, 1) - np.clip(jax_float, 0, 1)).max() <= MAX_FLOAT_DIFF


def test_embed_and_project_match_the_training_loops_restore_and_pipeline(run, test_digits):
  """Raw test digits through load_encoder == the eval pipeline's images through the model with
  the TrainState the training loop restores (every output, every digit, stored order)."""
  images, labels = test_digits
  enc = load.load_encoder(run)
  assert enc.step == 4 and enc.image_size == 16
  assert enc.config.to_dict() == checkpointing.read_config(run).to_dict()
  h, z = enc.embed(images), enc.project(images)

  config = checkpointing.read_config(run)
  mesh = sharding.make_mesh()
  info = sources.get_info(config)
  model = models.build_model(config, info.num_classes)
  init = train.make_init_fn(config, model, optim.create_optimizer(config, info.num_train), mesh)
  mngr = checkpointing.manager(run, create=False)
  state = checkpointing.restore(mngr, init(), 4)
  mngr.close()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  fn = feature_store.make_outputs_fn(model.apply, mesh, ('features', 'projection', 'sup_logits'))
  ref, ref_labels = feature_store.extract(config, 'test', info.num_eval, mesh,
                                     lambda x: fn(variables, x))
  np.testing.assert_array_equal(ref_labels, labels)
  assert h.shape == (1000, 8 * 8) and h.dtype == np.float32  # ResNet-10 x0.125: 512 / 8.
  assert z.shape == (1000, config.model.proj_out_dim) and z.dtype == np.float32
  # 16 px: the two preprocessings give identical pixels; only float summation order differs.
  np.testing.assert_allclose(h, ref['features'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(z, ref['projection'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(enc.outputs(images[:50], 'sup_logits'), ref['sup_logits'][:50],
                             rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves(enc.variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_any_size_one_image_floats_and_batches(run, test_digits, monkeypatch):
  images = test_digits[0][:37]
  enc = load.load_encoder(run)
  h = enc.embed(images)
  # One image -> [D]; floats in [0, 1] give the uint8 result.
  np.testing.assert_allclose(enc.embed(images[3]), h[3], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(enc.embed(images.astype(np.float64) / 255), h, rtol=1e-4, atol=1e-5)
  # Another size: a 2x nearest-neighbour enlargement resizes back to nearly the same input.
  big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
  hb = enc.embed(big)
  cos = np.sum(hb * h, 1) / (np.linalg.norm(hb, axis=1) * np.linalg.norm(h, axis=1))
  assert hb.shape == h.shape and cos.min() > 0.95
  odd = enc.embed(np.zeros((2, 45, 19, 3), np.uint8))  # Non-square, no crop at 16 px.
  assert odd.shape == (2, h.shape[1])
  assert enc.embed(images[:0]).shape == (0, h.shape[1])
  # Batches of at most batch_size reach the device (padded to few shapes), whatever the input.
  seen = []
  fn = enc._fn('features')  # pylint: disable=protected-access

  def spy(variables, x):
    seen.append(x.shape[0])
    return fn(variables, x)

  monkeypatch.setattr(enc, '_fn', lambda output: spy)
  np.testing.assert_allclose(enc.embed(images, batch_size=16), h, rtol=1e-4, atol=1e-5)
  assert seen == [16, 16, 8]  # 37 = 16 + 16 + 5, the last padded to a multiple of 8 devices.
  for bad, match in ((images[..., :1], r'\[B, H, W, 3\]'), (images.astype(np.int32), 'dtype'),
                     (images.astype(np.float32), r'in \[0, 1\]')):
    with pytest.raises(ValueError, match=match):
      enc.embed(bad)


def test_workdir_checkpoint_directories_and_steps(run):
  ckpts = os.path.join(run, 'checkpoints')
  enc2 = load.load_encoder(run, step=2)
  assert enc2.step == 2
  for path in (os.path.join(ckpts, '2'), os.path.join(ckpts, '2', 'default')):
    enc = load.load_encoder(path)
    assert (enc.step, enc.checkpoint.workdir) == (2, run)
    for a, b in zip(jax.tree.leaves(enc.variables), jax.tree.leaves(enc2.variables)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  latest = load.load_encoder(run)
  assert latest.step == 4
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(latest.variables['params']),
                 jax.tree.leaves(enc2.variables['params'])))
  with pytest.raises(load.CheckpointNotFoundError, match=r'no checkpoint of step 3.*\[2, 4\]'):
    load.load_encoder(run, step=3)
  with pytest.raises(ValueError, match='step 2, but step=4'):
    load.load_encoder(os.path.join(ckpts, '2'), step=4)
  with pytest.raises(load.CheckpointNotFoundError, match='no config.json'):
    load.load_encoder(os.path.dirname(run))
  # Paths are parsed by string arithmetic, the same for gs:// (no I/O here).
  assert encoder.split_path('gs://b/runs/r1/checkpoints/300') == ('gs://b/runs/r1', 300)
  assert encoder.split_path('gs://b/runs/r1/checkpoints/300/default') == ('gs://b/runs/r1', 300)
  assert encoder.split_path('gs://b/runs/r1') == ('gs://b/runs/r1', None)


def test_linear_eval_restores_through_load(run):
  """linear_eval's init_checkpoint: a workdir (newest step) or one checkpoint directory."""
  config = test_config.get_config()
  config.mode = 'linear_eval'
  config.init_checkpoint = run
  assert linear_eval.pretraining_run(config).step == 4
  config.init_checkpoint = os.path.join(run, 'checkpoints', '2')
  found = linear_eval.pretraining_run(config)
  assert (found.workdir, found.step) == (run, 2)
  assert found.config.model.width_multiplier == 0.125


_NO_TF = textwrap.dedent('''
    import sys
    for name in ('tensorflow', 'tensorflow_datasets'):
      sys.modules[name] = None  # As if not installed: import fails, find_spec finds nothing.
    try:
      import tensorflow
      raise SystemExit('tensorflow still importable')
    except ImportError:
      pass
    import numpy as np
    from simclr_jax import load
    from simclr_jax.data import embedded
    images = embedded.load('test')[0][:40]
    enc = load.load_encoder(sys.argv[1])
    np.save(sys.argv[2], np.concatenate([enc.embed(images), enc.project(images)], 1))
    loaded = sorted(m for m, v in sys.modules.items() if m.startswith('tensorflow') and v)
    assert not loaded, loaded
    print('ok')
''')


def test_load_and_embed_without_tensorflow(run, test_digits, tmp_path):
  """A Python where `import tensorflow` fails loads the checkpoint and embeds the same values."""
  out = str(tmp_path / 'h.npy')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One device there: the result must not depend on the count.
  r = subprocess.run([sys.executable, '-c', _NO_TF, run, out], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-3000:]
  enc = load.load_encoder(run)
  images = test_digits[0][:40]
  want = np.concatenate([enc.embed(images), enc.project(images)], 1)
  np.testing.assert_allclose(np.load(out), want, rtol=1e-4, atol=1e-5)


def test_notebook_runs_on_a_checkpoint(run, tmp_path, monkeypatch):
  """notebooks/load_checkpoint.ipynb runs top to bottom (any error fails) and draws its figures."""
  monkeypatch.setenv('SIMCLR_WORKDIR', run)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')  # Stored clean.
  t = time.time()
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  print(f'notebook ran in {time.time() - t:.1f} s')
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'step 4' in text and 'features (1000, 64) float32' in text
  assert sum('image/png' in o.get('data', {}) for o in outputs) == 2  # Neighbours grid, 2-D map.
