"""The paper-style figures and tables of an ablation sweep (simclr_jax/sweep.py), from its rows.

A row is {'name', 'overrides': {dotted_key: value}, 'linear_top1', 'knn_top1', ...} (None where the
run has no results yet). A study's FIGURE picks the drawing:
- {'kind': 'heatmap', 'labels': [...], 'cells': {run: (row, col)}, 'mirror': True}: Figure 5;
  rows = first transform, columns = second, the diagonal = one transform alone, a last column
  with the row mean; 'mirror' fills (col, row) from (row, col) where only one was run.
- {'kind': 'bars', 'x': key, 'series': key}: Figure 8; groups of bars by the values of override
  `x`, one bar per value of `series`; a run without `x` (e.g. head 'none') is drawn in every group.
- {'kind': 'table', 'columns': [keys]}: Tables 1, 4, 5; also the markdown table of every kind.
`value` (default 'linear_top1') is the number drawn.
"""

import math
import os
from typing import Optional

METRICS = (('linear_top1', 'linear top-1'), ('knn_top1', 'kNN top-1'),
           ('online_top1', 'online top-1'), ('contrast_loss', 'contrast loss'),
           ('contrast_acc', 'contrast acc'), ('wall_clock_seconds', 'seconds'))


def _cell(x) -> str:
  if x is None:
    return 'RESULT: pending'
  if isinstance(x, float):
    return f'{x:.0f}' if abs(x) >= 100 else f'{x:.3f}'
  return str(x)


def table_markdown(rows: list[dict], fig: dict, title: Optional[str] = None) -> str:
  """A markdown table: the run, its overrides (or fig['columns']) and the metrics."""
  keys = fig.get('columns') or list(dict.fromkeys(k for r in rows for k in r['overrides']))
  head = ['run', *(k.split('.')[-1] for k in keys), *(label for _, label in METRICS)]
  lines = []
  if title:
    lines += [title.strip().splitlines()[0], '']
  lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['name'], *(_cell(r['overrides'].get(k, '')) for k in keys),
             *(_cell(r.get(m)) for m, _ in METRICS)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def heatmap_grid(rows: list[dict], fig: dict) -> tuple[list, list]:
  """(labels, matrix [row][col] of values or None) of a heatmap spec, mirrored if asked."""
  labels = list(fig['labels'])
  cells = fig.get('cells') or {r['name']: tuple((r['name'].split('+') * 2)[:2]) for r in rows}
  value = fig.get('value', 'linear_top1')
  grid = [[None] * len(labels) for _ in labels]
  by_name = {r['name']: r for r in rows}
  for name, (a, b) in cells.items():
    if name in by_name and by_name[name].get(value) is not None:
      grid[labels.index(a)][labels.index(b)] = by_name[name][value]
  if fig.get('mirror'):
    for i in range(len(labels)):
      for j in range(len(labels)):
        if grid[i][j] is None:
          grid[i][j] = grid[j][i]
  return labels, grid


def bar_groups(rows: list[dict], fig: dict) -> tuple[list, list, dict]:
  """(x values, series values, {(series, x): value}) of a bars spec."""
  xk, sk, value = fig['x'], fig['series'], fig.get('value', 'linear_top1')
  xs = list(dict.fromkeys(r['overrides'][xk] for r in rows if xk in r['overrides']))
  series = list(dict.fromkeys(r['overrides'].get(sk) for r in rows))
  out = {}
  for r in rows:
    if r.get(value) is None:
      continue
    for x in ([r['overrides'][xk]] if xk in r['overrides'] else xs):
      out[(r['overrides'].get(sk), x)] = r[value]
  return xs, series, out


def draw(rows: list[dict], fig: dict, path: str, title: str = '') -> str:
  """Draws the figure into `path`; returns one line saying what was written (or why not)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return (f'matplotlib is not installed: no {path}; `pip install matplotlib` (a dependency of '
            'simclr_jax) and rerun the same command (finished runs are not rerun).')
  value = fig.get('value', 'linear_top1')
  kind = fig['kind']
  if kind == 'heatmap':
    labels, grid = heatmap_grid(rows, fig)
    means = [_mean([v for j, v in enumerate(g) if j != i]) for i, g in enumerate(grid)]
    n = len(labels)
    f, ax = plt.subplots(figsize=(1.0 * n + 2.5, 0.8 * n + 1.5))
    data = [[math.nan if v is None else v for v in g] + [math.nan if m is None else m]
            for g, m in zip(grid, means)]
    im = ax.imshow(data, cmap='Greens', vmin=min(_finite(data), default=0),
                   vmax=max(_finite(data), default=1))
    for i, g in enumerate(data):
      for j, v in enumerate(g):
        ax.text(j, i, '-' if math.isnan(v) else f'{100 * v:.1f}', ha='center', va='center',
                fontsize=8)
    ax.set_xticks(range(n + 1), [*labels, 'mean'], rotation=45, ha='right')
    ax.set_yticks(range(n), labels)
    ax.set_xlabel('2nd transformation')
    ax.set_ylabel('1st transformation')
    ax.axvline(n - 0.5, color='white', lw=3)
    f.colorbar(im, ax=ax, label=value)
  elif kind == 'bars':
    xs, series, values = bar_groups(rows, fig)
    f, ax = plt.subplots(figsize=(1.8 * max(len(xs), 1) + 2, 3.5))
    width = 0.8 / max(len(series), 1)
    for k, s in enumerate(series):
      ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(xs))],
             [values.get((s, x), 0.0) for x in xs], width, label=str(s))
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(fig['x'].split('.')[-1])
    ax.set_ylabel(value)
    ax.legend(title=fig['series'].split('.')[-1])
  else:
    done = [r for r in rows if r.get(value) is not None]
    f, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    ax.barh(range(len(done)), [r[value] for r in done])
    ax.set_yticks(range(len(done)), [r['name'] for r in done])
    ax.invert_yaxis()
    ax.set_xlabel(value)
  ax.set_title(title)
  f.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  f.savefig(path, dpi=120)
  plt.close(f)
  return f'{path} written ({kind}).'


def _mean(values: list) -> Optional[float]:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def _finite(data: list) -> list:
  return [v for g in data for v in g if not math.isnan(v)]
