"""A 2-D picture of a representation: PCA of features, one colour per class, written as a PNG.

Uses matplotlib's Agg backend (no display needed); PCA by NumPy SVD, so it takes well under a
second for the at most `max_points` points it draws.
"""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] -> (coordinates [N, 2] on the top two principal axes, their variance fractions [2])."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(0, keepdims=True)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  var = s ** 2
  frac = var[:2] / max(var.sum(), 1e-30)
  coords = x @ vt[:2].T
  if coords.shape[1] < 2:  # D == 1: nothing to show on the second axis.
    coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    frac = np.pad(frac, (0, 2 - len(frac)))
  return coords, frac


def embeddings_png(features: np.ndarray, labels: np.ndarray, path: str, *, title: str,
                   max_points: int = 1000, seed: int = 0) -> None:
  """Scatter of the PCA projection of (a seeded random subset of) L2-normalised `features`
  [N, D], coloured by integer `labels` [N], with a legend; saved to `path` as PNG."""
  features, labels = np.asarray(features), np.asarray(labels)
  if len(labels) > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_points, replace=False))
    features, labels = features[keep], labels[keep]
  # The kNN monitor and NT-Xent see cosine geometry: project the unit-norm features.
  features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  coords, frac = pca_2d(features)
  fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100)
  cmap = plt.get_cmap('tab10' if labels.max(initial=0) < 10 else 'tab20')
  for c in np.unique(labels):
    sel = labels == c
    ax.scatter(coords[sel, 0], coords[sel, 1], s=8, alpha=0.75, color=cmap(int(c) % cmap.N),
               label=str(int(c)), linewidths=0)
  ax.set_xlabel(f'PC 1 ({100 * frac[0]:.1f}% of variance)')
  ax.set_ylabel(f'PC 2 ({100 * frac[1]:.1f}% of variance)')
  ax.set_title(f'{title}\n{len(labels)} points', fontsize=9)
  ax.legend(title='label', loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8,
            markerscale=2, frameon=False)
  fig.tight_layout()
  fig.savefig(path, format='png')
  plt.close(fig)
