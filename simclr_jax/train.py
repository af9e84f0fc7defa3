"""train_and_evaluate(config, workdir): pretrain SimCLR, checkpoint, then evaluate frozen features.

Data flow: config -> validation -> data info -> mesh -> model -> optimiser -> sharded TrainState
(restored from the workdir's latest checkpoint if there is one) -> jitted steps over the global
batch -> progress lines, TensorBoard scalars, checkpoints; every train.eval_every_epochs and at the
end the online probe and the kNN monitor (bank: data.probe_train_split, or a class-balanced
eval.knn_bank_size subset of it) on the whole eval split -> linear probes and kNN for the SimCLR
encoder and baselines -> results.json, embeddings.png.
Features stay sharded over the devices throughout (evaluate.extract_sharded); only accuracies and
the embedding plot's points reach the hosts.
The same function serves the CLI, tests, benchmarks and notebooks.
"""

import functools
import json
import time
from typing import Any, Callable, Optional

from clu import metric_writers
from clu import parameter_overview
from etils import epath
import jax
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax import cluster
from simclr_jax import evaluate
from simclr_jax import knn
from simclr_jax import loop
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import plots
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import validation
from simclr_jax.data import input_pipeline

RESULTS_FILE = 'results.json'
EMBEDDINGS_FILE = 'embeddings.png'
EVAL_HISTORY_FILE = 'eval_history.json'  # Every evaluation of the run, across restarts.
KNN_BANK_FILE = 'knn_bank.json'  # The kNN bank's positions: its label pass runs once per run.


make_init_fn = steps.make_init_fn  # Kept here for callers; defined beside the state it builds.


def eval_every_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """Steps between evaluations during pretraining (0 = none; the end is always evaluated)."""
  epochs = config.train.eval_every_epochs
  if epochs <= 0:
    return 0
  return max(1, int(round(epochs * max(num_train // config.train.batch_size, 1))))


def pretrain(config, workdir, info, mesh, init_fn, writer, eval_fn=None) -> loop.Result:
  """The pretraining loop (loop.run with the SimCLR step and stream).

  `eval_fn(state, step)`, if given, runs every config.train.eval_every_epochs (not at the last
  step: the caller evaluates the final state); its time is left out of img/s, ETA and seconds.
  """
  lr_fn = optim.create_learning_rate_fn(config, info.num_train)
  total = optim.total_steps(config, info.num_train)
  mngr, state, start = loop.restore(config, workdir, init_fn())
  if not start:
    parameter_overview.log_parameter_overview(state.params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  progress.say(f'Model: ResNet-{config.model.resnet_depth} x{config.model.width_multiplier} '
       f'(sk_ratio {config.model.sk_ratio}), {n_params:,} parameters; {mesh.size} device(s), '
       f'{jax.process_count()} process(es); global batch {config.train.batch_size}; '
       f'{total} steps ({info.num_train} examples).')

  train_step = jax.jit(
      functools.partial(steps.train_step, config=config, lr_fn=lr_fn, mesh=mesh),
      donate_argnums=(0,))

  def batches(first):
    return iter(input_pipeline.train_dataset(
        config, process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=first).as_numpy_iterator())

  return loop.run(
      config, workdir, mngr=mngr, state=state, start=start, total=total, step_fn=train_step,
      batches=batches, mesh=mesh, writer=writer, loss_key='total_loss',
      describe=lambda m: (f'loss {m["contrast_loss"]:.4f} contrast_acc {m["contrast_acc"]:.3f} '
                          + (f'probe_acc {m["supervised_acc"]:.3f} ' if 'supervised_acc' in m
                             else '') + f'lr {m["learning_rate"]:.4f}'),
      eval_fn=eval_fn,
      eval_every=eval_every_steps(config, info.num_train) if eval_fn is not None else 0)


def knn_bank(config: ml_collections.ConfigDict, info, workdir: str
             ) -> tuple[Optional[np.ndarray], Optional[dict]]:
  """(stored positions of the kNN bank in the probe split (knn.bank_indices), or None for the
  whole split; a summary {'split', 'size', 'per_class': [min, max]} or None).

  A subset needs the split's labels: one label-only pass over it, shared out over the
  processes, before training; its result is kept in workdir/knn_bank.json, so a restart reads
  that instead (process 0 reads, every process gets the same bank)."""
  e, split = config.eval, input_pipeline.probe_split(config)
  if e.knn_bank_size <= 0 or e.knn_bank_size >= info.num_probe_train:
    return None, None
  key = {'dataset': info.name, 'split': split, 'num_examples': info.num_probe_train,
         'bank_size': e.knn_bank_size, 'num_classes': info.num_classes}
  path = epath.Path(workdir) / KNN_BANK_FILE

  def cached():
    if not path.exists():
      return None
    saved = json.loads(path.read_text())
    return saved if saved.get('key') == key else None

  saved = cluster.process_0_does(cached, f'reading {path}')
  if saved is None:
    labels = evaluate.split_labels(config, split, info.num_probe_train)
    input_pipeline.check_labels(labels, info.num_classes, f'kNN bank split {split!r}')
    indices = knn.bank_indices(labels, e.knn_bank_size, info.num_classes)
    counts = np.bincount(labels[indices], minlength=info.num_classes)
    saved = {'key': key, 'indices': indices.tolist(),
             'per_class': [int(counts.min()), int(counts.max())]}
    cluster.process_0_does(lambda: path.write_text(json.dumps(saved)), f'writing {path}')
  indices = np.asarray(saved['indices'], np.int64)
  per_class = max(1, e.knn_bank_size // info.num_classes)
  progress.say(f'kNN bank: {len(indices):,} of the {info.num_probe_train:,} examples of '
               f'{split!r} (the first {per_class} of each class).')
  return indices, {'split': split, 'size': len(indices), 'per_class': saved['per_class']}


def monitor(config, info, mesh, outputs_fn, variables, bank_indices=None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Online linear probe and kNN monitor of `variables` over the whole eval split.

  The kNN bank is the probe split (data.probe_train_split, else data.train_split) or its
  `bank_indices` rows. Features never leave the devices. Returns (metrics, monitored) where
  metrics holds online_probe_top1/top5 (if the model has the online probe), knn_top1/top5 and
  examples_evaluated, and monitored = {'bank': Sharded features, 'eval': Sharded features,
  'knn': the kNN result dict} for reuse by the final probes.
  """
  e, c = config.eval, info.num_classes
  split = input_pipeline.probe_split(config)
  fn = functools.partial(outputs_fn, variables)
  bank = evaluate.extract_sharded(config, split, info.num_probe_train, mesh,
                                  lambda x: fn(x)['features'], indices=bank_indices)
  ev = evaluate.extract_sharded(config, config.data.eval_split, info.num_eval, mesh, fn)
  features = ev.select('features')
  nbrs = knn.knn_classify_sharded(bank, features, c, mesh, k=e.knn_k,
                                  temperature=e.knn_temperature, chunk_size=e.knn_chunk_size)
  metrics = {}
  if 'sup_logits' in ev.outputs:  # (kNN has checked the labels.)
    top1, top5 = evaluate.topk_accuracies(ev.outputs['sup_logits'], ev, (1, 5))
    metrics.update(online_probe_top1=top1, online_probe_top5=top5)
  metrics.update(knn_top1=nbrs['top1'], knn_top5=nbrs['top5'],
                 examples_evaluated=evaluate.count(ev))
  return metrics, {'bank': bank, 'eval': features, 'knn': nbrs}


def log_eval(writer, step: int, metrics: dict[str, Any], k: int) -> None:
  """TensorBoard scalars eval/<name> and one progress line."""
  writer.write_scalars(step, {f'eval/{name}': v for name, v in metrics.items()})
  writer.flush()
  probe = (f'online probe top-1 {metrics["online_probe_top1"]:.4f} '
           f'top-5 {metrics["online_probe_top5"]:.4f}, '
           if 'online_probe_top1' in metrics else '')
  progress.say(f'[eval @ step {step}] {probe}kNN (k={k}) top-1 {metrics["knn_top1"]:.4f} '
       f'top-5 {metrics["knn_top5"]:.4f} on {metrics["examples_evaluated"]} examples')


def evaluate_representations(config, info, mesh, init_fn, outputs_fn, variables, monitored,
                             bank_indices=None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Linear probes and kNN on frozen features: SimCLR encoder (`variables`; `monitored` from
  the final `monitor`), random-init encoder, raw pixels. Each probe trains on the whole probe
  split and each kNN uses the monitor's bank; one representation's features are on the devices
  at a time. Returns (linear_probe, knn) dicts keyed by representation."""
  e, c = config.eval, info.num_classes
  split = input_pipeline.probe_split(config)
  probe = functools.partial(
      evaluate.linear_probe_sharded, num_classes=c, mesh=mesh, steps=e.probe_steps,
      batch_size=e.probe_batch_size, learning_rate=e.probe_learning_rate,
      weight_decay=e.probe_weight_decay, seed=config.seed)
  knn_fn = functools.partial(knn.knn_classify_sharded, num_classes=c, mesh=mesh, k=e.knn_k,
                             temperature=e.knn_temperature, chunk_size=e.knn_chunk_size)

  splits = ((split, info.num_probe_train), (config.data.eval_split, info.num_eval))

  def features(embed):
    return tuple(evaluate.extract_sharded(config, s, n, mesh, embed) for s, n in splits)

  train = (monitored['bank'] if bank_indices is None else  # The eval split is monitored's.
           evaluate.extract_sharded(config, split, info.num_probe_train, mesh,
                                    lambda x: outputs_fn(variables, x)['features']))
  probes = {'simclr': probe(train, monitored['eval'])}
  nbrs = {'simclr': monitored['knn']}
  del train
  if e.baselines:
    rand = init_fn()
    rand_vars = {'params': rand.params, 'batch_stats': rand.batch_stats}
    baselines = {
        'random_init': lambda: features(lambda x: outputs_fn(rand_vars, x)['features']),
        'raw_pixels': lambda: tuple(evaluate.pixels(config, s, n, mesh) for s, n in splits)}
    for name, extract in baselines.items():
      train, ev = extract()
      probes[name] = probe(train, ev)
      nbrs[name] = knn_fn(train if bank_indices is None else
                          evaluate.restrict(train, bank_indices), ev)
  return probes, nbrs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Pretrains, evaluates and returns the results dict (also written to workdir/results.json).

  Input errors (config values, data, workdir, a resume with another config unless
  `allow_config_change`) raise before anything is written or compiled.
  """
  t0 = time.time()
  validation.validate(config, jax.device_count(), jax.process_count())
  info = input_pipeline.get_info(config)  # Fails fast, with instructions, if data is missing.
  if config.train.batch_size > info.num_train:
    raise validation.ConfigError(
        f'config.train.batch_size={config.train.batch_size} is invalid; allowed: at most the '
        f'{info.num_train} examples of {info.name} {config.data.train_split!r}.')
  # Whether every host can write and see the workdir comes first: a host that sees another
  # directory would otherwise take other decisions about what it holds.
  checkpointing.check_workdir_writable(workdir)
  cluster.check_shared_workdir(workdir)
  checkpointing.check_resume_config(workdir, config, allow_config_change)
  mesh = sharding.make_mesh()
  model = models.build_model(config, info.num_classes)
  checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
  writer.write_hparams({k: v for k, v in checkpointing.flat(config.to_dict()).items()
                        if isinstance(v, (int, float, str, bool))})

  init_fn = make_init_fn(config, model, optim.create_optimizer(config, info.num_train), mesh)
  outputs_fn = evaluate.make_outputs_fn(model.apply, mesh)
  bank_indices, bank = knn_bank(config, info, workdir)
  history = EvalHistory(workdir)

  def eval_fn(state, step):
    metrics, monitored = monitor(config, info, mesh, outputs_fn, _variables(state), bank_indices)
    log_eval(writer, step, metrics, config.eval.knn_k)
    history.add(dict(metrics, step=step))
    return monitored

  run = pretrain(config, workdir, info, mesh, init_fn, writer, eval_fn)
  state, last, train_seconds = run.state, run.last_metrics, run.train_seconds
  step = int(jax.device_get(state.step))
  with loop.exit_on_sigterm(
      f'SIGTERM during the final evaluation: pretraining is finished and its checkpoint of '
      f'step {step} is saved in {workdir}/checkpoints; exiting at once, without results. Rerun '
      'the same command to evaluate (no step is trained again).'):
    progress.say('Pretraining done; evaluating the online probe, kNN and linear probes on '
                 'frozen features...')
    results = _evaluate_and_report(config, info, mesh, init_fn, outputs_fn, state, eval_fn,
                                   history, bank_indices, bank, writer)
  results.update(final_train_metrics=last, train_seconds=train_seconds,
                 skipped_records=run.skipped_records, wall_clock_seconds=time.time() - t0)
  _write_results(config, workdir, info, results, step)
  progress.say(format_table(results))
  return results


def _evaluate_and_report(config, info, mesh, init_fn, outputs_fn, state, eval_fn, history,
                         bank_indices, bank, writer) -> dict[str, Any]:
  """The final evaluation of `state`: monitors, probes and kNN; returns the results dict (the
  embedding plot's points under '_plot')."""
  step = int(jax.device_get(state.step))
  monitored = eval_fn(state, step)
  final = history.entries[-1]
  probes, nbrs = evaluate_representations(config, info, mesh, init_fn, outputs_fn,
                                          _variables(state), monitored, bank_indices)
  for name, r in probes.items():
    writer.write_scalars(step, {f'eval/{name}_top1': r['top1'], f'eval/{name}_top5': r['top5'],
                                f'eval/{name}_knn_top1': nbrs[name]['top1']})
  writer.flush()
  results = {
      'config_name': config.name, 'dataset': info.name, 'eval_split': config.data.eval_split,
      'probe_train_split': input_pipeline.probe_split(config),
      'checkpoint_step': step, 'examples_evaluated': final['examples_evaluated'],
      'linear_probe': probes, 'knn': nbrs, 'knn_bank': bank,
      'online_probe': {k: final[f'online_probe_{k}'] for k in ('top1', 'top5')
                       if f'online_probe_{k}' in final},
      'eval_history': history.entries,
  }
  points = config.eval.embedding_plot_points
  if points > 0:  # Every process takes part in gathering the plotted rows; process 0 plots.
    wanted = plots.subsample(info.num_eval, points, config.seed)
    results['_plot'] = evaluate.gather_rows(
        monitored['eval'], np.arange(info.num_eval) if wanted is None else wanted, mesh)
  return results


def _write_results(config, workdir, info, results, step) -> None:
  """results.json and embeddings.png (process 0; its failure stops every process alike)."""
  plot = results.pop('_plot', None)

  def write():
    (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    if plot is not None:
      plots.embeddings_png(
          *plot, str(epath.Path(workdir) / EMBEDDINGS_FILE),
          title=f'SimCLR encoder features, {info.name} {config.data.eval_split} split, '
                f'step {step}',
          max_points=config.eval.embedding_plot_points, seed=config.seed)

  cluster.process_0_does(write, f'writing {workdir}/{RESULTS_FILE}')


class EvalHistory:
  """Every evaluation of a run, kept in workdir/eval_history.json across restarts (process 0
  reads and writes it; every process holds the same entries). An evaluation repeated after a
  resume replaces the earlier one of the same step."""

  def __init__(self, workdir: str):
    self.path = epath.Path(workdir) / EVAL_HISTORY_FILE
    self.entries = cluster.process_0_does(
        lambda: json.loads(self.path.read_text()) if self.path.exists() else [],
        f'reading {self.path}')

  def add(self, entry: dict[str, Any]) -> None:
    by_step = {e['step']: e for e in self.entries}
    by_step[entry['step']] = entry
    self.entries = [by_step[s] for s in sorted(by_step)]
    cluster.process_0_does(lambda: self.path.write_text(json.dumps(self.entries, indent=1)),
                           f'writing {self.path}')


def format_table(results: dict[str, Any]) -> str:
  rows = [('representation', 'linear top-1', 'top-5', 'train top-1', 'kNN top-1', 'kNN top-5')]
  labels = {'simclr': 'SimCLR encoder', 'random_init': 'same net, random init',
            'raw_pixels': 'raw pixels'}
  nbrs = results.get('knn', {})
  for name, r in results['linear_probe'].items():
    k = nbrs.get(name)
    rows.append((labels.get(name, name), f'{r["top1"]:.4f}', f'{r["top5"]:.4f}',
                 f'{r["train_top1"]:.4f}', f'{k["top1"]:.4f}' if k else '-',
                 f'{k["top5"]:.4f}' if k else '-'))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  k_used = f', kNN k={next(iter(nbrs.values()))["k"]}' if nbrs else ''
  lines = [f'Linear probe{k_used} on {results["dataset"]} ({results["eval_split"]} split, '
           f'step {results["checkpoint_step"]}, {results["wall_clock_seconds"]:.0f} s total):']
  for i, r in enumerate(rows):
    lines.append('  ' + '  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                                  for j, (c, w) in enumerate(zip(r, widths))))
    if i == 0:
      lines.append('  ' + '  '.join('-' * w for w in widths))
  if results.get('online_probe'):
    o = results['online_probe']
    lines.append(f'Online probe (trained during pretraining): top-1 {o["top1"]:.4f}, '
                 f'top-5 {o["top5"]:.4f}; {results["examples_evaluated"]} examples evaluated.')
  return '\n'.join(lines)


def _variables(state: steps.TrainState) -> dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats}
