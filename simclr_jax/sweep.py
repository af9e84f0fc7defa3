"""python -m simclr_jax.sweep --config=configs/ablations/<study>.py --workdir=DIR [--only=a,b]
    [--dry_run] [--compile_cache=True]

Runs an ablation study: a config file with get_config() (the study's base config), a module-level
get_sweep() -> [(run_name, {dotted_key: value}), ...] and FIGURE ('heatmap' | 'table' | 'bars', or
a dict with 'kind' and its axes; evaluators/sweep_figures.py). Every override of every run is
checked against the locked config and config validation first: a bad study costs one `error:`
line and exit status 2, before any run.

Runs go one after the other, each as `python -m simclr_jax.main --config=<study> --workdir=DIR/<run>
--config.<key>=<value> ...` (a fresh process: nothing leaks between runs), its output in
DIR/logs/<run>.log. Resumable: a run whose DIR/<run>/results.json exists is skipped, an
interrupted one resumes from its own checkpoint. The runs share the JAX persistent compilation
cache DIR/.jax_cache. One progress line per run; a failed run prints its error line and log path
and the others go on (exit status 1 at the end). Finally DIR/results.csv (one row per run),
DIR/table.md (printed) and DIR/figure.png (matplotlib) are written from every results.json.
"""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_FLAGS = {}


def define_flags() -> None:
  """The CLI's flags, defined only when the module runs as the program: importing it (tests, a
  notebook) defines none, so its --config cannot clash with another tool's."""
  _FLAGS.update(
      config=flags.DEFINE_string('config', None, 'The study file, e.g. '
                                 'configs/ablations/fig5_augmentation_pairs.py.', required=True),
      workdir=flags.DEFINE_string('workdir', None, 'Directory of the study: one workdir per run, '
                                  'logs/, results.csv, table.md, figure.png.', required=True),
      only=flags.DEFINE_list('only', None, 'Run only these runs (names); the CSV and figure '
                             'still use every finished run.'),
      dry_run=flags.DEFINE_bool('dry_run', False, 'Validate the study and list its runs; run '
                                'none.'),
      compile_cache=flags.DEFINE_bool('compile_cache', True, 'Share a JAX persistent '
                                      'compilation cache, DIR/.jax_cache, between the runs.'))


RESULTS_FILE = 'results.json'
FIGURES = ('heatmap', 'table', 'bars')
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+=-]*$')


class StudyError(ValueError):
  """A study file that cannot be run; the message says what to fix."""


def load_study(path: str) -> tuple[Any, list, dict]:
  """(module, [(name, overrides)], figure spec) of study file `path`, every run checked."""
  if not os.path.isfile(path):
    raise StudyError(f'--config={path}: no such file.')
  spec = importlib.util.spec_from_file_location(f'_study_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise StudyError(f'--config={path} cannot be loaded: {type(e).__name__}: {e}') from e
  for attr in ('get_config', 'get_sweep'):
    if not callable(getattr(module, attr, None)):
      raise StudyError(f'--config={path} has no {attr}(); a study defines get_config() (the base '
                       'config), get_sweep() (the runs) and FIGURE (configs/ablations/).')
  runs = list(module.get_sweep())
  if not runs:
    raise StudyError(f'--config={path}: get_sweep() returned no runs.')
  names = set()
  for run in runs:
    if not (isinstance(run, tuple) and len(run) == 2 and isinstance(run[1], dict)):
      raise StudyError(f'{path}: get_sweep() must return (run_name, {{key: value}}) pairs; got '
                       f'{run!r}.')
    name, overrides = run
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in names or name == 'logs':
      raise StudyError(f'{path}: run name {name!r} is not a unique directory name '
                       '(letters, digits, _ . + = -).')
    names.add(name)
    make_config(module, overrides, f'{path}: run {name!r}')
  return module, runs, figure_spec(module, path)


def figure_spec(module, path: str) -> dict:
  fig = getattr(module, 'FIGURE', 'table')
  fig = {'kind': fig} if isinstance(fig, str) else dict(fig)
  if fig.get('kind') not in FIGURES:
    raise StudyError(f'{path}: FIGURE kind {fig.get("kind")!r} is invalid; allowed: {FIGURES}.')
  return fig


def make_config(module, overrides: dict, where: str = 'override'):
  """The study's base config with `overrides` applied, as main would build it; raises StudyError
  on an unknown key, a wrong type or an invalid value."""
  config = module.get_config()
  for key, value in overrides.items():
    if not isinstance(value, (bool, int, float, str)):
      raise StudyError(f'{where}: {key}={value!r}: values must be bool, int, float or str.')
    *groups, field = key.split('.')
    node = config
    try:
      for g in groups:
        node = node[g]
      if not hasattr(node, field) or hasattr(getattr(node, field), 'keys'):
        raise KeyError(field)
      setattr(node, field, value)
    except (KeyError, AttributeError) as e:
      raise StudyError(f'{where}: config has no key {key!r}; see configs/default.py for every '
                       'key.') from e
    except TypeError as e:
      raise StudyError(f'{where}: {key}={value!r}: {e}') from e
  # After the key checks: validation imports TF (seconds), a mistyped key need not wait for it.
  from simclr_jax import validation  # pylint: disable=g-import-not-at-top
  try:
    validation.validate(config, 1)
  except validation.ConfigError as e:
    raise StudyError(f'{where}: {e}') from e
  return config


def flag_value(value) -> str:
  """A value as config_flags parses it back (bool True/False, float repr, str as is)."""
  return repr(value) if isinstance(value, float) else str(value)


def command(study: str, workdir: str, overrides: dict) -> list[str]:
  return [sys.executable, '-m', 'simclr_jax.main', f'--config={study}', f'--workdir={workdir}',
          *(f'--config.{k}={flag_value(v)}' for k, v in overrides.items())]


def subprocess_runner(argv: list[str], env: dict, log_path: str) -> int:
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(f'\n$ {" ".join(argv)}\n')
    log.flush()
    return subprocess.call(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def error_line(log_path: str) -> str:
  """The run's `error:` line, else the last line of its log."""
  try:
    with open(log_path, encoding='utf-8', errors='replace') as f:
      lines = [l.strip() for l in f if l.strip()]
  except OSError:
    return 'no log'
  errors = [l for l in lines if l.startswith('error:')]
  return (errors or lines or ['empty log'])[-1][:300]


def summary(results: dict) -> dict:
  """The numbers of one results.json that a study compares."""
  get = lambda d, *keys: _dig(d, keys)
  final = results.get('final_train_metrics') or {}
  return {'linear_top1': get(results, 'linear_probe', 'simclr', 'top1'),
          'linear_top5': get(results, 'linear_probe', 'simclr', 'top5'),
          'knn_top1': get(results, 'knn', 'simclr', 'top1'),
          'online_top1': get(results, 'online_probe', 'top1'),
          'contrast_loss': final.get('contrast_loss'), 'contrast_acc': final.get('contrast_acc'),
          'steps': results.get('checkpoint_step'), 'train_seconds': results.get('train_seconds'),
          'wall_clock_seconds': results.get('wall_clock_seconds')}


def _dig(d, keys):
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def _fmt(x) -> str:
  return '-' if x is None else f'{x:.3f}'


def run_study(study: str, workdir: str, *, only: Optional[list] = None, compile_cache: bool = True,
              runner: Callable[[list, dict, str], int] = subprocess_runner,
              say: Callable[[str], None] = print) -> int:
  """Runs the study's missing runs, writes the CSV, table and figure; returns the exit status."""
  module, runs, fig = load_study(study)
  if only:
    unknown = sorted(set(only) - {n for n, _ in runs})
    if unknown:
      raise StudyError(f'--only: {unknown} are not runs of {study}.')
  os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
  env = dict(os.environ)
  if compile_cache:
    env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(workdir, '.jax_cache'))
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
  failed = []
  for k, (name, overrides) in enumerate(runs, 1):
    head = f'[{k}/{len(runs)}] {name}'
    run_dir = os.path.join(workdir, name)
    done = os.path.join(run_dir, RESULTS_FILE)
    if os.path.exists(done):
      s = summary(_read(done))
      say(f'{head}: done before (results.json), linear top-1 {_fmt(s["linear_top1"])}')
      continue
    if only and name not in only:
      continue
    log = os.path.join(workdir, 'logs', f'{name}.log')
    t0 = time.time()
    rc = runner(command(study, run_dir, overrides), env, log)
    seconds = time.time() - t0
    if rc == 0 and os.path.exists(done):
      s = summary(_read(done))
      say(f'{head}: {seconds:.0f} s, linear top-1 {_fmt(s["linear_top1"])}, kNN top-1 '
          f'{_fmt(s["knn_top1"])}')
    else:
      failed.append(name)
      say(f'{head}: FAILED (exit {rc}) after {seconds:.0f} s: {error_line(log)} (log: {log})')
  rows = collect(workdir, runs)
  write_csv(os.path.join(workdir, 'results.csv'), rows)
  say(f'{sum(r["linear_top1"] is not None for r in rows)} of {len(runs)} runs have results; '
      f'{workdir}/results.csv written.')
  from simclr_jax.evaluators import sweep_figures  # pylint: disable=g-import-not-at-top
  table = sweep_figures.table_markdown(rows, fig, title=module.__doc__)
  with open(os.path.join(workdir, 'table.md'), 'w', encoding='utf-8') as f:
    f.write(table)
  say(table)
  say(sweep_figures.draw(rows, fig, os.path.join(workdir, 'figure.png'),
                         title=os.path.splitext(os.path.basename(study))[0]))
  if failed:
    say(f'{len(failed)} run(s) failed: {", ".join(failed)}; rerun the same command to retry them.')
    return 1
  return 0


def _read(path: str) -> dict:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def collect(workdir: str, runs: list) -> list[dict]:
  """One row per run of the grid (numbers None where results.json is missing), grid order."""
  rows = []
  for name, overrides in runs:
    path = os.path.join(workdir, name, RESULTS_FILE)
    s = summary(_read(path)) if os.path.exists(path) else summary({})
    rows.append({'name': name, 'overrides': overrides, **s})
  return rows


def write_csv(path: str, rows: list[dict]) -> None:
  keys = list(dict.fromkeys(k for r in rows for k in r['overrides']))
  metrics = [k for k in rows[0] if k not in ('name', 'overrides')]
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['name', *keys, *metrics, 'overrides'])
    for r in rows:
      w.writerow([r['name'], *(r['overrides'].get(k, '') for k in keys),
                  *('' if r[m] is None else r[m] for m in metrics),
                  json.dumps(r['overrides'], sort_keys=True)])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    config, workdir = _FLAGS['config'].value, _FLAGS['workdir'].value
    if _FLAGS['dry_run'].value:
      _, runs, fig = load_study(config)
      for k, (name, overrides) in enumerate(runs, 1):
        print(f'[{k}/{len(runs)}] {name}: ' + ' '.join(command(config, os.path.join(
            workdir, name), overrides)[3:]))
      print(f'{len(runs)} runs; figure: {fig["kind"]}.')
      return
    status = run_study(config, workdir, only=_FLAGS['only'].value,
                       compile_cache=_FLAGS['compile_cache'].value)
  except StudyError as e:
    cli.fail(str(e))
  sys.exit(status)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
