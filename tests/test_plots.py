"""plots: PCA against the known geometry of planar data; t-SNE against PCA on real digits (a
2-D kNN score); the PNG decodes and is not blank; no global matplotlib backend switch."""

import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from simclr_jax.evaluators import plots
from simclr_jax.data import embedded


def test_pca_recovers_a_plane_embedded_in_high_dimensions():
  rng = np.random.default_rng(0)
  plane = rng.normal(size=(300, 2)) * np.array([3.0, 1.0])
  basis, _ = np.linalg.qr(rng.normal(size=(50, 2)))  # Orthonormal [50, 2].
  coords, frac = plots.pca_2d(plane @ basis.T + 7.0)
  np.testing.assert_allclose(frac.sum(), 1.0, atol=1e-9)  # All variance in two axes.
  assert frac[0] > frac[1]
  # Pairwise distances are those of the plane (PCA is a rotation of it here).
  d = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)
  np.testing.assert_allclose(d(coords), d(plane - plane.mean(0)), atol=1e-8)


def test_embeddings_png_is_a_valid_image(tmp_path):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 10, 3000)
  feats = rng.normal(size=(3000, 32)) + 3 * np.eye(32)[labels]
  path = str(tmp_path / 'e.png')
  assert plots.embeddings_png(feats, labels, path, title='test', max_points=500) == 'tsne'
  with Image.open(path) as im:
    assert im.format == 'PNG'
    im.load()
    rgb = np.asarray(im.convert('RGB'))
  assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10


def _knn_2d_accuracy(coords, labels, k=5):
  """Leave-one-out k-nearest-neighbour accuracy in the 2-D map (how well it keeps classes apart)."""
  d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  votes = labels[np.argsort(d, axis=1)[:, :k]]
  pred = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
  return np.mean(pred == labels)


def test_tsne_keeps_digit_classes_apart_where_pca_does_not():
  """Real digits (600 test images, raw pixels as features): classes mix on the top two principal
  axes but stay apart under t-SNE (measured kNN-in-2D 0.875 vs 0.448)."""
  images, labels = embedded.load('test')
  sel = np.random.default_rng(0).choice(len(labels), 600, replace=False)
  x, y = images[sel, ..., 0].reshape(600, -1).astype(np.float32), labels[sel]
  tsne, how, axes = plots.project_2d(x, 'tsne', seed=0)
  pca, _, _ = plots.project_2d(x, 'pca')
  assert how.startswith('t-SNE') and axes == ('t-SNE 1', 't-SNE 2')
  acc_tsne, acc_pca = _knn_2d_accuracy(tsne, y), _knn_2d_accuracy(pca, y)
  assert acc_tsne > 0.75 and acc_tsne > acc_pca + 0.25, (acc_tsne, acc_pca)


def test_auto_method_is_tsne_for_small_sets_pca_for_large(tmp_path, monkeypatch):
  assert plots.resolve_method('auto', 1000) == 'tsne'
  assert plots.resolve_method('auto', plots.TSNE_MAX_POINTS + 1) == 'pca'
  assert plots.resolve_method('tsne', 3) == 'pca'  # Too few points for t-SNE.
  with pytest.raises(ValueError, match='allowed'):
    plots.resolve_method('umap', 10)
  monkeypatch.setattr(plots, 'TSNE_MAX_POINTS', 100)
  rng = np.random.default_rng(2)
  feats, labels = rng.normal(size=(300, 8)), rng.integers(0, 3, 300)
  assert plots.embeddings_png(feats, labels, str(tmp_path / 'a.png'), title='t',
                              max_points=300) == 'pca'
  assert plots.embeddings_png(feats, labels, str(tmp_path / 'b.png'), title='t',
                              max_points=80) == 'tsne'


def test_importing_plots_leaves_the_matplotlib_backend_alone():
  code = ('import matplotlib; matplotlib.use("svg"); from simclr_jax.evaluators import plots; '
          'print(matplotlib.get_backend())')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == 'svg', out.stderr[-2000:]
