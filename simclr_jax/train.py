"""train_and_evaluate(config, workdir): pretrain SimCLR, checkpoint, then evaluate frozen features.

Data flow: config -> validation -> data info -> mesh -> model -> optimiser -> sharded TrainState
(restored from the workdir's latest checkpoint if there is one) -> jitted steps over the global
batch -> progress lines, TensorBoard scalars, checkpoints -> linear probes -> results.json.
The same function serves the CLI, tests, benchmarks and notebooks.
"""

import functools
import json
import time
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from etils import epath
import jax
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax import evaluate
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import validation
from simclr_jax.data import input_pipeline

RESULTS_FILE = 'results.json'


def _say(msg: str) -> None:
  """Progress goes to stdout on process 0 (and to the absl log everywhere)."""
  logging.info(msg)
  if jax.process_index() == 0:
    print(msg, flush=True)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def make_init_fn(config: ml_collections.ConfigDict, model, tx, mesh
                 ) -> Callable[[], steps.TrainState]:
  """A compiled `() -> TrainState` whose arrays are created replicated on the mesh (no host
  round trip). Call it again for an identical fresh state (the random-init baseline) without
  recompiling.

  The key uses the 'rbg' PRNG: on CPU, XLA compiles threefry-based initialisers ~6x slower
  (34 s vs 6 s for the test model); initial values are still a pure function of config.seed.
  """
  shape = (config.data.image_size, config.data.image_size, 3)
  init = functools.partial(steps.create_train_state, model=model, tx=tx, image_shape=shape)
  rng = jax.random.key(config.seed, impl='rbg')
  abstract = jax.eval_shape(init, rng)
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  compiled = jax.jit(init, out_shardings=shardings)
  return lambda: compiled(rng)


def pretrain(config, workdir, info, mesh, init_fn, writer):
  """The pretraining loop. Returns (final state, last logged metrics, seconds spent training)."""
  lr_fn = optim.create_learning_rate_fn(config, info.num_train)
  total = optim.total_steps(config, info.num_train)
  state = init_fn()
  mngr = checkpointing.manager(workdir, keep=config.train.keep_checkpoints)
  start = 0
  if mngr.latest_step() is not None:
    state = checkpointing.restore(mngr, state)
    start = int(jax.device_get(state.step))
    _say(f'Resumed from {workdir}/checkpoints at step {start}.')
  else:
    parameter_overview.log_parameter_overview(state.params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  _say(f'Model: ResNet-{config.model.resnet_depth} x{config.model.width_multiplier} '
       f'(sk_ratio {config.model.sk_ratio}), {n_params:,} parameters; {mesh.size} device(s), '
       f'{jax.process_count()} process(es); global batch {config.train.batch_size}; '
       f'{total} steps ({info.num_train} examples).')

  train_step = jax.jit(
      functools.partial(steps.train_step, config=config, lr_fn=lr_fn, mesh=mesh),
      donate_argnums=(0,))
  data = iter(input_pipeline.train_dataset(
      config, process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=start).as_numpy_iterator())

  pending, last, seconds = [], {}, 0.0
  t_last = t_start = time.time()
  step_last = start
  for step in range(start, total):
    batch = sharding.global_batch(next(data), mesh)
    state, metrics = train_step(state, batch)
    pending.append(metrics)
    is_last = step + 1 == total
    now = time.time()
    if is_last or now - t_last >= config.train.log_every_seconds or step == start:
      fetched = jax.device_get(pending)
      pending = []
      last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      if not np.isfinite(last['total_loss']):
        raise FloatingPointError(f'Loss became {last["total_loss"]} at step {step + 1}; '
                                 'lower optim.learning_rate or check the data.')
      done = step + 1
      rate = (done - step_last) * config.train.batch_size / max(now - t_last, 1e-9)
      eta = (total - done) * (now - t_start) / max(done - start, 1)
      last['images_per_sec'] = rate if step != start else 0.0
      writer.write_scalars(done, {f'train/{k}': v for k, v in last.items()})
      _say(f'[{done:>{len(str(total))}}/{total}] loss {last["contrast_loss"]:.4f} '
           f'contrast_acc {last["contrast_acc"]:.3f} '
           + (f'probe_acc {last["supervised_acc"]:.3f} ' if 'supervised_acc' in last else '')
           + f'lr {last["learning_rate"]:.4f} {rate:,.0f} img/s ETA {_format_eta(eta)}'
           + (' (includes compilation)' if step == start else ''))
      t_last, step_last = now, done
    if (step + 1) % config.train.checkpoint_every_steps == 0 or is_last:
      checkpointing.save(mngr, step + 1, state)
  seconds = time.time() - t_start
  mngr.wait_until_finished()
  mngr.close()
  return state, last, seconds


def evaluate_representations(config, info, mesh, model, init_fn, state) -> dict[str, Any]:
  """Linear probes on frozen features: SimCLR encoder, random-init encoder, raw pixels."""
  e = config.eval
  probe = functools.partial(evaluate.linear_probe, num_classes=info.num_classes,
                            steps=e.probe_steps, learning_rate=e.probe_learning_rate,
                            weight_decay=e.probe_weight_decay)

  embed = evaluate.make_embed_fn(model.apply, mesh)

  def features_of(variables):
    fn = functools.partial(embed, variables)
    return (evaluate.extract(config, config.data.train_split, info.num_train, mesh, fn),
            evaluate.extract(config, config.data.eval_split, info.num_eval, mesh, fn))

  results = {'simclr': probe(*features_of({'params': state.params,
                                            'batch_stats': state.batch_stats}))}
  if e.baselines:
    rand = init_fn()
    results['random_init'] = probe(*features_of({'params': rand.params,
                                                 'batch_stats': rand.batch_stats}))
    results['raw_pixels'] = probe(
        evaluate.pixels(config, config.data.train_split, info.num_train, mesh),
        evaluate.pixels(config, config.data.eval_split, info.num_eval, mesh))
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains, evaluates and returns the results dict (also written to workdir/results.json)."""
  t0 = time.time()
  validation.validate(config, jax.device_count(), jax.process_count())
  checkpointing.check_workdir_writable(workdir)
  info = input_pipeline.get_info(config)  # Fails fast, with instructions, if data is missing.
  mesh = sharding.make_mesh()
  model = models.build_model(config, info.num_classes)
  checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
  writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()
                        if isinstance(v, (int, float, str, bool))})

  init_fn = make_init_fn(config, model, optim.create_optimizer(config, info.num_train), mesh)
  state, last, train_seconds = pretrain(config, workdir, info, mesh, init_fn, writer)
  _say('Pretraining done; evaluating frozen features with linear probes...')
  probes = evaluate_representations(config, info, mesh, model, init_fn, state)
  step = int(jax.device_get(state.step))
  for name, r in probes.items():
    writer.write_scalars(step, {f'eval/{name}_top1': r['top1'], f'eval/{name}_top5': r['top5']})
  writer.flush()
  results = {
      'config_name': config.name, 'dataset': info.name, 'eval_split': config.data.eval_split,
      'checkpoint_step': step, 'linear_probe': probes,
      'final_train_metrics': last, 'train_seconds': train_seconds,
      'wall_clock_seconds': time.time() - t0,
  }
  if jax.process_index() == 0:
    (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
  _say(format_table(results))
  return results


def format_table(results: dict[str, Any]) -> str:
  rows = [('representation', 'linear top-1', 'top-5', 'train top-1')]
  labels = {'simclr': 'SimCLR encoder', 'random_init': 'same net, random init',
            'raw_pixels': 'raw pixels'}
  for name, r in results['linear_probe'].items():
    rows.append((labels.get(name, name), f'{r["top1"]:.4f}', f'{r["top5"]:.4f}',
                 f'{r["train_top1"]:.4f}'))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = [f'Linear probe on {results["dataset"]} ({results["eval_split"]} split, '
           f'step {results["checkpoint_step"]}, {results["wall_clock_seconds"]:.0f} s total):']
  for i, r in enumerate(rows):
    lines.append('  ' + '  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                                  for j, (c, w) in enumerate(zip(r, widths))))
    if i == 0:
      lines.append('  ' + '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
