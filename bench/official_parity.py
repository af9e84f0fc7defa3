"""Official SimCLR (google-research/simclr, tf2/run.py) against simclr_jax, end to end: both
pretrain with the same hyperparameters on the same data, then the same linear probe scores both
frozen encoders, over several seeds.

    python bench/official_parity.py --official=PATH_TO_CHECKOUT --out=/tmp/official_parity \
        [--seeds=3] [--epochs=3] [--image_size=16] [--batch_size=256] ...

PATH_TO_CHECKOUT is a clone of google-research/simclr (its tf2/ directory is run as it is; it is
never imported here or edited). The official code needs Keras 2 under TensorFlow 2.16+:
`pip install tf_keras==<your TensorFlow version>`; the bench sets TF_USE_LEGACY_KERAS=1 for its
process and checks the package before anything runs.

Steps (a rerun reuses every finished step, so an interrupted run resumes):
1. Data: the embedded digits (4,000 train / 1,000 test, RGB 28x28) written as PNG files and
   packed by `python -m simclr_jax.prepare` into OUT/data/parity_digits (a TFDS directory both
   sides read by name). run.py reads with as_supervised=True; prepare declares ('image', 'label')
   as supervised keys (the bench still adds them to its copy's dataset_info.json, for sets that
   an older prepare wrote).
2. Official: `python tf2/run.py --train_mode=pretrain ...` (flags from HPARAMS, see
   `official_flags`), one run per seed into OUT/official_<seed>; run.py has no seed flag, so its
   runs are unseeded repeats. --checkpoint_steps=1: a summary (and checkpoint) every step, for
   the loss curve.
3. Conversion: the last official checkpoint through simclr_jax's converter
   (`checkpoints.convert.from_official`, what `python -m simclr_jax.convert` runs) into
   OUT/official_<seed>_converted; the bench sets the workdir's data.image_size to the trained
   size (the converter cannot see it in a checkpoint and writes 32 for the CIFAR stem), so both
   encoders get the same eval preprocessing.
4. Ours: `python -m simclr_jax.main --config=configs/default.py` with the same fields
   (`ours_overrides`), config.seed = seed, into OUT/ours_<seed>.
5. Probe: both workdirs through `load.load_encoder`; features of the 4,000 train and 1,000 test
   digits; `evaluators.linear_probe.linear_probe` (the full-batch reference of the probe our
   pretraining ends with: standardised features, Adam, eval.probe_* defaults), same for both.
6. Table: linear top-1 per seed, mean +- std, the difference and whether it lies within the
   seed spread; the contrastive loss of both at common steps (official: TensorBoard summaries in
   its model_dir; ours: train/contrast_loss in the workdir's events). Written to OUT/parity.csv,
   OUT/parity.md and OUT/loss.csv as well.
"""

import csv
import glob
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from simclr_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

DATASET = 'parity_digits'

# One hyperparameter dict drives both sides. Defaults: the official CIFAR recipe (README: LARS,
# lr 1.0 linear scaling, wd 1e-4, tau 0.5, s 0.5, no blur) at a size that runs in minutes on 2
# CPU cores (ResNet-18 CIFAR stem at 16 px, 3 epochs = 94 steps of 128, 3 of them warmup).
HPARAMS = {
    'resnet_depth': 18, 'width_multiplier': 1, 'image_size': 16, 'batch_size': 128,
    'epochs': 3, 'learning_rate': 1.0, 'learning_rate_scaling': 'linear',
    'warmup_epochs': 0.1, 'weight_decay': 1e-4, 'momentum': 0.9, 'optimizer': 'lars',
    'temperature': 0.5, 'hidden_norm': True, 'color_jitter_strength': 0.5, 'use_blur': False,
    'num_proj_layers': 2, 'proj_out_dim': 128, 'proj_head_mode': 'nonlinear',
    'ft_proj_selector': 0, 'batch_norm_decay': 0.9, 'lineareval_while_pretraining': True,
}

# hparam -> (our config key, official run.py flag). Official behaviour the flags cannot change,
# set on our side to match: crop area 0.08-1 (data_util.crop_and_resize), flip always on,
# simclrv2 colour jitter, LARS eeta 0.001, L2 on kernels outside the supervised head (LARS).
MAPPING = {
    'resnet_depth': ('model.resnet_depth', 'resnet_depth'),
    'width_multiplier': ('model.width_multiplier', 'width_multiplier'),
    'image_size': ('data.image_size', 'image_size'),
    'batch_size': ('train.batch_size', 'train_batch_size'),
    'epochs': ('train.epochs', 'train_epochs'),
    'learning_rate': ('optim.learning_rate', 'learning_rate'),
    'learning_rate_scaling': ('optim.learning_rate_scaling', 'learning_rate_scaling'),
    'warmup_epochs': ('optim.warmup_epochs', 'warmup_epochs'),
    'weight_decay': ('optim.weight_decay', 'weight_decay'),
    'momentum': ('optim.momentum', 'momentum'),
    'optimizer': ('optim.optimizer', 'optimizer'),
    'temperature': ('loss.temperature', 'temperature'),
    'hidden_norm': ('loss.hidden_norm', 'hidden_norm'),
    'color_jitter_strength': ('aug.color_jitter_strength', 'color_jitter_strength'),
    'use_blur': ('aug.use_blur', 'use_blur'),
    'num_proj_layers': ('model.num_proj_layers', 'num_proj_layers'),
    'proj_out_dim': ('model.proj_out_dim', 'proj_out_dim'),
    'proj_head_mode': ('model.proj_head_mode', 'proj_head_mode'),
    'ft_proj_selector': ('model.ft_proj_selector', 'ft_proj_selector'),
    'batch_norm_decay': ('model.batch_norm_decay', 'batch_norm_decay'),
    'lineareval_while_pretraining': ('train.lineareval_while_pretraining',
                                     'lineareval_while_pretraining'),
}
# Our fields fixed to the official code's hard-wired behaviour (no official flag).
OURS_FIXED = {
    'aug.crop': True, 'aug.crop_area_min': 0.08, 'aug.flip': True, 'aug.impl': 'simclrv2',
    'aug.on_device': False, 'loss.type': 'nt_xent', 'model.sk_ratio': 0.0,
    'optim.trust_coefficient': 0.001, 'data.cache': True,
}
# Ours, bookkeeping only: no evaluation during training, no baselines or plot, a progress line
# (= a TensorBoard scalar) every step like the official summaries below.
OURS_RUN = {
    'eval.baselines': False, 'eval.embedding_plot_points': 0, 'train.eval_every_epochs': 0.0,
    'train.log_every_seconds': 0.0, 'train.checkpoint_every_steps': 100_000,
    'eval.probe_steps': 50,  # Its own final probe; the bench probes both sides itself.
}
# Official, bookkeeping only.
OFFICIAL_RUN = {
    'train_mode': 'pretrain', 'mode': 'train', 'use_tpu': False, 'cache_dataset': True,
    'train_split': 'train', 'eval_split': 'test', 'checkpoint_steps': 1, 'keep_checkpoint_max': 2,
    'sk_ratio': 0.0,
}

def _fmt(v) -> str:
  return str(v) if not isinstance(v, float) else repr(v)


def ours_overrides(hp: dict, seed: int) -> list[str]:
  """--config.* flags of simclr_jax.main for these hyperparameters."""
  cfg = {MAPPING[k][0]: v for k, v in hp.items()}
  cfg.update(OURS_FIXED)
  cfg.update(OURS_RUN)
  cfg.update({'data.dataset': DATASET, 'data.train_split': 'train', 'data.eval_split': 'test',
              'seed': seed})
  return [f'--config.{k}={_fmt(v)}' for k, v in cfg.items()]


def official_flags(hp: dict) -> list[str]:
  """run.py flags for these hyperparameters."""
  if int(hp['width_multiplier']) != hp['width_multiplier']:
    raise ValueError(f'width_multiplier={hp["width_multiplier"]}: the official flag is an integer')
  fl = {MAPPING[k][1]: v for k, v in hp.items()}
  fl['width_multiplier'] = int(fl['width_multiplier'])
  fl.update(OFFICIAL_RUN)
  fl['dataset'] = DATASET
  return [f'--{k}={_fmt(v)}' for k, v in fl.items()]


def official_run_py(path: str) -> str:
  """tf2/run.py of the checkout at PATH (the checkout or its tf2/); ValueError naming the fix."""
  for cand in (os.path.join(path, 'tf2', 'run.py'), os.path.join(path, 'run.py')):
    if os.path.isfile(cand) and os.path.isfile(os.path.join(os.path.dirname(cand), 'model.py')):
      return os.path.abspath(cand)
  raise ValueError(f'--official={path} has no tf2/run.py: pass a clone of '
                   'https://github.com/google-research/simclr')


def check_tf_keras() -> None:
  """The official code subclasses tf.keras legacy APIs that Keras 3 lacks."""
  if importlib.util.find_spec('tf_keras') is None:
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      ver = '.'.join(tf.__version__.split('.')[:2])
    except ImportError:
      ver = 'X.Y'
    raise ValueError(f'the official code needs Keras 2: pip install "tf_keras~={ver}.0" '
                     '(the release matching your TensorFlow)')


def summarize(ours: list[float], official: list[float]) -> dict:
  """Mean, std (sample; 0 for one run) of each side, the difference ours - official, and whether
  it lies within the seed spread (|diff| <= the larger std; None with one run each)."""
  def stats(v):
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
  (mo, so), (mf, sf) = stats(ours), stats(official)
  spread = max(so, sf)
  within = abs(mo - mf) <= spread if max(len(ours), len(official)) > 1 else None
  return {'ours_mean': mo, 'ours_std': so, 'official_mean': mf, 'official_std': sf,
          'diff': mo - mf, 'within_spread': within}


def markdown_table(ours: list[float], official: list[float]) -> str:
  """The top-1 table (fractions shown as %)."""
  s = summarize(ours, official)
  pc = lambda x: f'{100 * x:.2f}'
  per = lambda v: ' '.join(pc(x) for x in v)
  within = {True: 'yes', False: 'no', None: 'n/a (one run)'}[s['within_spread']]
  return '\n'.join([
      '| encoder | linear top-1 % (mean +- std) | per seed |',
      '|---|---|---|',
      f'| official tf2/run.py | {pc(s["official_mean"])} +- {pc(s["official_std"])} | '
      f'{per(official)} |',
      f'| simclr_jax | {pc(s["ours_mean"])} +- {pc(s["ours_std"])} | {per(ours)} |',
      f'| difference (ours - official) | {100 * s["diff"]:+.2f} points; within the seed spread: '
      f'{within} | |'])


def loss_table(curves_ours: list[dict], curves_official: list[dict], points: int) -> list[tuple]:
  """(step, ours mean, official mean) of the per-step contrastive loss at `points` steps both
  sides logged, mean over runs (each value averaged over the 3 steps ending there)."""
  common = sorted(set.intersection(*[set(c) for c in curves_ours + curves_official]))
  if not common:
    return []
  idx = sorted({round(i * (len(common) - 1) / max(points - 1, 1)) for i in range(points)})
  def at(curves, step):
    vals = []
    for c in curves:
      window = [c[s] for s in common if step - 2 <= s <= step]
      vals.append(sum(window) / len(window))
    return statistics.mean(vals)
  return [(common[i], at(curves_ours, common[i]), at(curves_official, common[i])) for i in idx]


# ---- the steps (subprocesses; the parent imports TensorFlow and JAX only to convert/probe) ----


def _run(cmd: list[str], log: str, env=None, cwd=ROOT) -> float:
  """Runs CMD with its output in LOG; returns its seconds (also kept in LOG.seconds)."""
  t = time.time()
  with open(log, 'w') as f:
    r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
  if r.returncode:
    tail = open(log).read()[-3000:]
    cli.fail(f'{" ".join(cmd[:3])} ... failed (exit {r.returncode}); log {log}:\n{tail}', 1)
  with open(log + '.seconds', 'w') as f:
    f.write(f'{time.time() - t:.1f}')
  return time.time() - t


def _seconds(log: str) -> float:
  """The time of a finished earlier run (NaN if unknown)."""
  try:
    return float(open(log + '.seconds').read())
  except (OSError, ValueError):
    return float('nan')


def prepare_data(out: str) -> str:
  data_dir = os.path.join(out, 'data')
  info = os.path.join(data_dir, DATASET, '1.0.0', 'dataset_info.json')
  if os.path.exists(info):
    return data_dir
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import embedded  # pylint: disable=g-import-not-at-top
  png = os.path.join(out, 'png')
  shutil.rmtree(png, ignore_errors=True)
  for split in embedded.SPLITS:
    x, y = embedded.load(split)
    for i, (im, label) in enumerate(zip(x, y)):
      d = os.path.join(png, split, str(label))
      os.makedirs(d, exist_ok=True)
      Image.fromarray(im).save(os.path.join(d, f'{i:05d}.png'))
  _run([sys.executable, '-m', 'simclr_jax.prepare', f'--images={png}', f'--out={data_dir}',
        f'--name={DATASET}', '--workers=1'], os.path.join(out, 'prepare.log'))
  with open(info) as f:
    d = json.load(f)
  d['supervisedKeys'] = {'tuple': {'items': [{'featureKey': 'image'}, {'featureKey': 'label'}]}}
  with open(info, 'w') as f:
    json.dump(d, f, indent=2)
  shutil.rmtree(png)
  return data_dir


def official_checkpoint(model_dir: str):
  """(prefix, step) of the newest ckpt-N in MODEL_DIR, or None."""
  steps = [int(p.rsplit('-', 1)[1].split('.')[0]) for p in glob.glob(os.path.join(model_dir, 'ckpt-*.index'))]
  return (os.path.join(model_dir, f'ckpt-{max(steps)}'), max(steps)) if steps else None


def train_official(run_py: str, hp: dict, data_dir: str, model_dir: str, total_steps: int) -> float:
  done = official_checkpoint(model_dir)
  if done and done[1] >= total_steps:
    return _seconds(model_dir + '.log')
  shutil.rmtree(model_dir, ignore_errors=True)
  os.makedirs(model_dir)
  # The environment the bench started with: not our XLA_FLAGS setting, which TF's XLA may not know.
  env = dict(_ENV0, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2')
  cmd = [sys.executable, run_py, *official_flags(hp), f'--data_dir={data_dir}',
         f'--model_dir={model_dir}']
  return _run(cmd, model_dir + '.log', env=env, cwd=os.path.dirname(run_py))


def convert_official(model_dir: str, workdir: str, image_size: int) -> None:
  if os.path.exists(os.path.join(workdir, 'config.json')):
    return
  from simclr_jax.checkpoints import convert  # pylint: disable=g-import-not-at-top
  prefix, step = official_checkpoint(model_dir)
  config, variables = convert.from_official(prefix)
  config.data.image_size = image_size  # A checkpoint cannot show it (see the module doc).
  shutil.rmtree(workdir, ignore_errors=True)
  convert.write_workdir(workdir, config, variables, step)
  print(convert.summary(config, variables), flush=True)


def train_ours(hp: dict, seed: int, data_dir: str, workdir: str) -> float:
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return _seconds(workdir + '.log')
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, '-m', 'simclr_jax.main', '--config=configs/default.py',
         f'--workdir={workdir}', *ours_overrides(hp, seed), f'--config.data.data_dir={data_dir}']
  return _run(cmd, workdir + '.log')


def read_curve(logdir: str, tag: str) -> dict:
  """{step: value} of scalar TAG in the TensorBoard event files under LOGDIR (v1 simple_value
  or v2 tensor summaries)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  curve = {}
  for path in sorted(glob.glob(os.path.join(logdir, '**', 'events.out.tfevents.*'),
                               recursive=True)):
    for e in tf.compat.v1.train.summary_iterator(path):
      for v in e.summary.value:
        if v.tag == tag:
          curve[int(e.step)] = (v.simple_value if v.HasField('simple_value')
                                else float(tf.make_ndarray(v.tensor)))
  return curve


def probe(workdir: str, steps: int) -> float:
  """Linear top-1 of WORKDIR's encoder: the same probe and features for every workdir."""
  from simclr_jax import load  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import embedded  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluators import linear_probe  # pylint: disable=g-import-not-at-top
  enc = load.load_encoder(workdir)
  (xtr, ytr), (xte, yte) = embedded.load('train'), embedded.load('test')
  r = linear_probe.linear_probe((enc.embed(xtr), ytr), (enc.embed(xte), yte),
                                embedded.NUM_CLASSES, steps=steps)
  return r['top1']


def define_flags() -> dict:
  """The CLI's flags (defined only when run as a script: an importing test defines none, so no
  name can clash with another module's)."""
  fl = {
      'official': flags.DEFINE_string('official', None, 'A google-research/simclr checkout '
                                      '(with tf2/run.py).', required=True),
      'out': flags.DEFINE_string('out', '/tmp/official_parity', 'Work and result directory.'),
      'seeds': flags.DEFINE_integer('seeds', 3, 'Runs per side (seeds 0..N-1; official: '
                                    'unseeded repeats).'),
      'probe_steps': flags.DEFINE_integer('probe_steps', 500, 'Adam steps of the linear probe '
                                          '(eval.probe_steps).'),
      'loss_points': flags.DEFINE_integer('loss_points', 6, 'Steps the loss table compares.'),
  }
  for k, v in HPARAMS.items():
    define = (flags.DEFINE_bool if isinstance(v, bool) else flags.DEFINE_integer
              if isinstance(v, int) else flags.DEFINE_float if isinstance(v, float)
              else flags.DEFINE_string)
    fl['hp_' + k] = define(k, v, f'Both sides: ours {MAPPING[k][0]}, official --{MAPPING[k][1]}.')
  return fl


FLAGS_ = {}
_ENV0 = dict(os.environ)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # Orbax's and TF's INFO lines.
  from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.configure()  # Before JAX starts (conversion, probe), as simclr_jax.main does.
  try:
    run_py = official_run_py(FLAGS_["official"].value)
    check_tf_keras()
    hp = {k: FLAGS_['hp_' + k].value for k in HPARAMS}
    official_flags(hp)
  except ValueError as e:
    cli.fail(str(e))
  if FLAGS_["seeds"].value < 1:
    cli.fail(f'--seeds={FLAGS_["seeds"].value}: at least 1')
  out = os.path.abspath(FLAGS_["out"].value)
  os.makedirs(out, exist_ok=True)
  hp_file = os.path.join(out, 'hparams.json')
  if os.path.exists(hp_file) and json.load(open(hp_file)) != hp:
    cli.fail(f'{out} holds runs with other hyperparameters ({hp_file}): pass a new --out')
  with open(hp_file, 'w') as f:
    json.dump(hp, f, indent=2)
  data_dir = prepare_data(out)
  total = 4000 * hp['epochs'] // hp['batch_size'] + 1  # Both sides' formula.
  rows, times = [], {'official': [], 'ours': []}
  seeds = list(range(FLAGS_["seeds"].value))
  for s in seeds:  # Alternate sides so a cut-short run still compares.
    off_dir = os.path.join(out, f'official_{s}')
    t = train_official(run_py, hp, data_dir, off_dir, total)
    times['official'].append(t)
    print(f'official seed {s}: {t:.0f} s', flush=True)
    convert_official(off_dir, off_dir + '_converted', hp['image_size'])
    t = train_ours(hp, s, data_dir, os.path.join(out, f'ours_{s}'))
    times['ours'].append(t)
    print(f'ours seed {s}: {t:.0f} s', flush=True)
  top1 = {'official': [], 'ours': []}
  for s in seeds:
    top1['official'].append(probe(os.path.join(out, f'official_{s}_converted'), FLAGS_["probe_steps"].value))
    top1['ours'].append(probe(os.path.join(out, f'ours_{s}'), FLAGS_["probe_steps"].value))
    rows.append({'seed': s, 'official_top1': top1['official'][-1], 'ours_top1': top1['ours'][-1],
                 'official_seconds': times['official'][s], 'ours_seconds': times['ours'][s]})
  curves_off = [read_curve(os.path.join(out, f'official_{s}'), 'train/contrast_loss') for s in seeds]
  curves_ours = [read_curve(os.path.join(out, f'ours_{s}'), 'train/contrast_loss') for s in seeds]
  losses = loss_table(curves_ours, curves_off, FLAGS_["loss_points"].value)

  table = markdown_table(top1['ours'], top1['official'])
  loss_md = '\n'.join(['| step | ours contrast loss | official contrast loss |', '|---:|---:|---:|']
                      + [f'| {st} | {a:.4f} | {b:.4f} |' for st, a, b in losses])
  hp_line = ', '.join(f'{k}={v}' for k, v in hp.items())
  secs = lambda v: ' '.join(f'{t:.0f}' for t in v)
  report = (f'Linear probe on frozen features ({FLAGS_["probe_steps"].value} Adam steps, 4,000 train / '
            f'1,000 test digits), {len(seeds)} run(s) per side, {total} steps each.\n\n{table}\n\n'
            f'Seconds per training run (start-up and compilation included; ours also its own '
            f'end-of-run eval): official {secs(times["official"])}; simclr_jax '
            f'{secs(times["ours"])}.\n\n'
            f'Contrastive loss (mean over runs, each the mean of the 3 steps ending at the step):'
            f'\n\n{loss_md}\n\nHyperparameters: {hp_line}\n')
  print(report)
  with open(os.path.join(out, 'parity.md'), 'w') as f:
    f.write(report)
  with open(os.path.join(out, 'parity.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(out, 'loss.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['step'] + [f'ours_{s}' for s in seeds] + [f'official_{s}' for s in seeds])
    for st in sorted(set().union(*curves_ours, *curves_off)):
      w.writerow([st] + [c.get(st, '') for c in curves_ours + curves_off])
  s = summarize(top1['ours'], top1['official'])
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump({'hparams': hp, 'seeds': seeds, 'steps': total, 'top1': top1, 'summary': s,
               'seconds': times, 'loss': losses}, f, indent=2)
  print(f'Wrote {out}/parity.md, parity.csv, loss.csv, summary.json')


if __name__ == '__main__':
  FLAGS_.update(define_flags())
  app.run(main, flags_parser=cli.parse_flags)
