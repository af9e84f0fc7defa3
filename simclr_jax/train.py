"""train_and_evaluate(config, workdir): pretrain SimCLR, checkpoint, then evaluate frozen features.

Data flow: config -> validation -> data info -> mesh -> model -> optimiser -> sharded TrainState
(restored from the workdir's latest checkpoint if there is one) -> jitted steps over the global
batch -> progress lines, TensorBoard scalars, checkpoints; every train.eval_every_epochs and at the
end the online probe and the kNN monitor (bank: data.probe_train_split, or a class-balanced
eval.knn_bank_size subset of it) on the whole eval split -> linear probes and kNN for the SimCLR
encoder and baselines -> results.json, embeddings.png.
Features stay sharded over the devices throughout (feature_store.extract_sharded); only accuracies and
the embedding plot's points reach the hosts.
The same function serves the CLI, tests, benchmarks and notebooks.
"""

import functools
import json
import time
from typing import Any

from clu import metric_writers
from clu import parameter_overview
from etils import epath
import jax
import ml_collections
import numpy as np

from simclr_jax.checkpoints import checkpointing
from simclr_jax.cpu import ops
from simclr_jax import cluster
from simclr_jax import data_check
from simclr_jax.evaluators import feature_store
from simclr_jax import loop
from simclr_jax import models
from simclr_jax import optim
from simclr_jax.evaluators import plots
from simclr_jax.evaluators import representations
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import validation
from simclr_jax.data import input_pipeline
from simclr_jax.data import sources

RESULTS_FILE = 'results.json'
EMBEDDINGS_FILE = 'embeddings.png'


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
  n_params = int(parameter_overview.count_parameters(state.params))
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Pretrains, evaluates and returns the results dict (also written to workdir/results.json).

  Input errors (config values, data, workdir, a resume with another config unless
  `allow_config_change`) raise before anything is written or compiled.
  """
  t0 = time.time()
  validation.validate(config, jax.device_count(), jax.process_count())
  info = sources.get_info(config)  # Fails fast, with instructions, if data is missing.
  data_check.check_same_files(config)
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
  model = models.build_model(config, info.num_classes, ops=ops.model_ops(config))
  checkpointing.write_config(workdir, config)
  data_check.announce(config, workdir)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
  writer.write_hparams({k: v for k, v in checkpointing.flat(config.to_dict()).items()
                        if isinstance(v, (int, float, str, bool))})

  init_fn = make_init_fn(config, model, optim.create_optimizer(config, info.num_train), mesh)
  outputs_fn = feature_store.make_outputs_fn(model.apply, mesh)
  bank_indices, bank = representations.knn_bank(config, info, workdir)
  history = representations.EvalHistory(workdir)

  def eval_fn(state, step):
    metrics, monitored = representations.monitor(config, info, mesh, outputs_fn, _variables(state), bank_indices)
    representations.log_eval(writer, step, metrics, config.eval.knn_k)
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
  probes, nbrs = representations.evaluate_representations(config, info, mesh, init_fn, outputs_fn,
                                          _variables(state), monitored, bank_indices)
  for name, r in probes.items():
    writer.write_scalars(step, {f'eval/{name}_top1': r['top1'], f'eval/{name}_top5': r['top5'],
                                f'eval/{name}_knn_top1': nbrs[name]['top1']})
  writer.flush()
  results = {
      'config_name': config.name, 'dataset': info.name, 'eval_split': config.data.eval_split,
      'probe_train_split': sources.probe_split(config),
      'checkpoint_step': step, 'examples_evaluated': final['examples_evaluated'],
      'linear_probe': probes, 'knn': nbrs, 'knn_bank': bank,
      'online_probe': {k: final[f'online_probe_{k}'] for k in ('top1', 'top5')
                       if f'online_probe_{k}' in final},
      'eval_history': history.entries,
  }
  points = config.eval.embedding_plot_points
  if points > 0:  # Every process takes part in gathering the plotted rows; process 0 plots.
    wanted = plots.subsample(info.num_eval, points, config.seed)
    results['_plot'] = feature_store.gather_rows(
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
  k_used = f', kNN k={next(iter(nbrs.values()))["k"]}' if nbrs else ''
  lines = [f'Linear probe{k_used} on {results["dataset"]} ({results["eval_split"]} split, '
           f'step {results["checkpoint_step"]}, {results["wall_clock_seconds"]:.0f} s total):',
           *progress.table(rows)]
  if results.get('online_probe'):
    o = results['online_probe']
    lines.append(f'Online probe (trained during pretraining): top-1 {o["top1"]:.4f}, '
                 f'top-5 {o["top5"]:.4f}; {results["examples_evaluated"]} examples evaluated.')
  return '\n'.join(lines)


def _variables(state: steps.TrainState) -> dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats}
