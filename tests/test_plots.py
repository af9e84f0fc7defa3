"""plots: PCA against the known geometry of planar data; the PNG decodes and is not blank."""

import numpy as np
from PIL import Image

from simclr_jax import plots


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
  plots.embeddings_png(feats, labels, path, title='test', max_points=500)
  with Image.open(path) as im:
    assert im.format == 'PNG'
    im.load()
    rgb = np.asarray(im.convert('RGB'))
  assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10
