"""2-D pictures of a representation: t-SNE (or PCA) of features, one colour per class.

`embeddings_png` writes the run's `embeddings.png`; `project_2d` and `scatter` draw the same
picture on any matplotlib Axes (notebooks). No pyplot and no global backend switch: figures are
`matplotlib.figure.Figure` objects saved directly, so importing this module leaves a notebook's
inline backend alone.

Why t-SNE: a linear probe separates the demo's digit classes at ~95%, yet the top two principal
axes of the same features show one overlapping cloud, since ten classes need more than two linear
directions. t-SNE keeps each point's neighbours close, which is what the kNN monitor and the
contrastive loss measure, so the classes appear as the separate groups they are. Its cost grows
faster than PCA's (about 4 s of one core for 1,000 points here): above TSNE_MAX_POINTS, 'auto'
falls back to PCA.
"""

from typing import Optional

import matplotlib
from matplotlib import figure as mpl_figure
import numpy as np

from simclr_jax.evaluators import knn

METHODS = ('auto', 'tsne', 'pca')
TSNE_MAX_POINTS = 5000  # 'auto' uses t-SNE up to this many points, PCA above.
TSNE_INPUT_DIMS = 50  # Features are first reduced to this many principal axes (sklearn's advice).


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


def tsne_2d(x: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
  """[N, D] -> t-SNE coordinates [N, 2] (scikit-learn, Barnes-Hut, PCA init; deterministic for
  a seed). Perplexity is capped at (N - 1) / 3 for small N."""
  from sklearn import manifold  # pylint: disable=g-import-not-at-top  # Slow import; only here.
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  x = np.asarray(x, np.float64)
  x = x - x.mean(0, keepdims=True)
  if x.shape[1] > TSNE_INPUT_DIMS:
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    x = x @ vt[:TSNE_INPUT_DIMS].T
  tsne = manifold.TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init='pca',
                       learning_rate='auto', random_state=seed)
  # One OpenMP thread: on a busy 2-core machine two spinning threads took 10x longer (39 s vs
  # 4 s of CPU for 1,000 points).
  with threadpoolctl.threadpool_limits(1, user_api='openmp'):
    return tsne.fit_transform(x.astype(np.float32)).astype(np.float64)


def resolve_method(method: str, n: int) -> str:
  if method not in METHODS:
    raise ValueError(f'method={method!r}; allowed: {METHODS}.')
  if n < 4:  # t-SNE needs a few neighbours per point.
    return 'pca'
  if method == 'auto':
    return 'tsne' if n <= TSNE_MAX_POINTS else 'pca'
  return method


def project_2d(features: np.ndarray, method: str = 'auto', seed: int = 0
               ) -> tuple[np.ndarray, str, tuple[str, str]]:
  """L2-normalised `features` [N, D] -> (coordinates [N, 2], what was done, axis labels).

  Unit-norm features first: the kNN monitor and NT-Xent see cosine geometry.
  """
  x = knn.l2_normalize(np.asarray(features, np.float64))
  method = resolve_method(method, len(x))
  if method == 'tsne':
    return (tsne_2d(x, seed), 't-SNE of L2-normalised features',
            ('t-SNE 1', 't-SNE 2'))
  coords, frac = pca_2d(x)
  return (coords, 'PCA of L2-normalised features',
          (f'PC 1 ({100 * frac[0]:.1f}% of variance)', f'PC 2 ({100 * frac[1]:.1f}% of variance)'))


def scatter(ax, coords: np.ndarray, labels: np.ndarray, axis_labels=None) -> None:
  """Points `coords` [N, 2] on matplotlib `ax`, one colour per integer label, with a legend."""
  labels = np.asarray(labels)
  cmap = matplotlib.colormaps['tab10' if labels.max(initial=0) < 10 else 'tab20']
  for c in np.unique(labels):
    sel = labels == c
    ax.scatter(coords[sel, 0], coords[sel, 1], s=8, alpha=0.75, color=cmap(int(c) % cmap.N),
               label=str(int(c)), linewidths=0)
  if axis_labels:
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
  ax.legend(title='label', loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8,
            markerscale=2, frameon=False)


def subsample(n: int, max_points: int, seed: int) -> Optional[np.ndarray]:
  """Sorted indices of a seeded random subset of max_points of range(n), or None to keep all."""
  if n <= max_points:
    return None
  return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def embeddings_png(features: np.ndarray, labels: np.ndarray, path: str, *, title: str,
                   max_points: int = 1000, seed: int = 0, method: str = 'auto') -> str:
  """Scatter of a 2-D map (`method`: 'tsne', 'pca', or 'auto' = t-SNE up to TSNE_MAX_POINTS
  points) of (a seeded random subset of max_points of) L2-normalised `features` [N, D], coloured
  by integer `labels` [N]; saved to `path` as PNG. The title's second line names the method.
  Returns the method used."""
  features, labels = np.asarray(features), np.asarray(labels)
  keep = subsample(len(labels), max_points, seed)
  if keep is not None:
    features, labels = features[keep], labels[keep]
  coords, how, axis_labels = project_2d(features, method, seed)
  fig = mpl_figure.Figure(figsize=(6.5, 5.5), dpi=100)
  ax = fig.subplots()
  scatter(ax, coords, labels, axis_labels)
  ax.set_title(f'{title}\n{how}, {len(labels)} points', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, format='png')
  return 'tsne' if how.startswith('t-SNE') else 'pca'
