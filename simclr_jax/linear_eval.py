"""run(config, workdir): linear evaluation or fine-tuning on top of a pretraining workdir.

    python -m simclr_jax.main --config=configs/linear_eval.py \
        --config.init_checkpoint=PRETRAIN_WORKDIR --workdir=NEW

The architecture comes from PRETRAIN_WORKDIR/config.json (every `model` field except
`ft_proj_selector`, plus `data.image_size`, which picks the stem); params and BN statistics come
from its latest checkpoint, read by encoders.load_encoder (init_checkpoint may also name one
checkpoint, PRETRAIN_WORKDIR/checkpoints/<step>). Then, as the official code (tf2/model.py,
tf2/resnet.py) does:

- 'linear_eval': the encoder (and the projection layers feeding the head) run in inference mode
  (BN moving averages) under stop_gradient; only a fresh Dense(num_classes) head trains (N(0, 0.01)
  init, or zeros with config.zero_init_logits_layer). Frozen parameters get exactly zero updates
  from the optimiser, so they and the BN statistics stay bitwise unchanged.
  config.linear_eval.precompute_features: extract the frozen head inputs of the train split once
  (eval preprocessing, no augmentation) and train the head on them; much faster, and equivalent
  to the augmented protocol minus the crop/flip augmentation.
- 'finetune': config.fine_tune_after_block = k freezes the stem (k >= 0) and groups 1..k (BN in
  inference mode, stop_gradient at the input of group k+1, zero updates); -1 trains everything,
  4 only the head. config.model.ft_proj_selector = s feeds the head with projection-head layer s
  (0 = encoder output); layers 1..s are kept and fine-tuned, the rest of g is dropped.

Training data: crop + flip only (data/supervised.py), optionally a class-balanced
config.data.label_fraction of the train split. Evaluation covers every example of the eval split
exactly once. Weight decay follows the official `add_weight_decay` for 'momentum'/'adam': L2 in
the loss over trainable non-BN weights (the paper's protocols use none: wd 0).

Writes workdir/config.json (the merged config), checkpoints, TensorBoard scalars, results.json.
With precompute_features the checkpoints hold the head only (the encoder is init_checkpoint's).

Differences from the official code, on purpose: projection-head layers past ft_proj_selector are
dropped (official keeps computing them, updating their BN statistics, though they feed nothing).
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterator

from clu import metric_writers
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from simclr_jax import cluster
from simclr_jax import data_check
from simclr_jax import loop
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import validation
from simclr_jax.checkpoints import checkpointing
from simclr_jax.checkpoints import encoder as encoders
from simclr_jax.checkpoints import pretrained
from simclr_jax.cpu import ops
from simclr_jax.data import sources
from simclr_jax.data import supervised
from simclr_jax.evaluators import feature_store
from simclr_jax.models import classifier
from simclr_jax.models import heads

# The pieces a job is assembled from, under the names tests and notebooks use.
build_classifier = classifier.build_classifier
feature_batches = supervised.feature_batches
pretraining_run = pretrained.pretraining_run
restore_pretrained = pretrained.restore_pretrained

MODES = ('linear_eval', 'finetune')
RESULTS_FILE = 'results.json'
NUM_GROUPS = 4


def create_optimizer(config, num_examples: int, params) -> optax.GradientTransformation:
  """optim.create_optimizer on the trainable leaves; frozen leaves get exactly zero updates."""
  return optax.multi_transform(
      {'train': optim.create_optimizer(config, num_examples), 'frozen': optax.set_to_zero()},
      classifier.trainable_labels(params, config))


def l2_loss(params, labels, config) -> jax.Array:
  """Official add_weight_decay for 'momentum'/'adam': wd * sum(w^2)/2 over trainable non-BN
  weights. (LARS decays inside the optimiser; our head is excluded there, as official.)"""
  wd = config.optim.weight_decay
  if not wd or config.optim.optimizer == 'lars':
    return jnp.zeros((), jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for (path, leaf), lab in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree.leaves(labels)):
    if lab == 'train' and not optim.is_batch_norm(path):
      total = total + 0.5 * jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return wd * total


# ---- steps ----


def train_step(state: steps.TrainState, batch: dict[str, jax.Array], *, config, labels,
               lr_fn: Callable, forward: Callable) -> tuple[steps.TrainState, dict]:
  """One supervised update. forward(variables, batch, train) -> (logits, new batch_stats)."""

  def loss_fn(params):
    logits, new_stats = forward({'params': params, 'batch_stats': state.batch_stats}, batch)
    ce = losses.supervised_loss(logits, batch['label'])
    l2 = l2_loss(params, labels, config)
    acc = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
    return ce + l2, (dict(supervised_loss=ce, weight_decay=l2, supervised_acc=acc), new_stats)

  grads, (metrics, new_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  metrics.update(learning_rate=lr_fn(state.step), grad_norm=steps.global_norm(grads))
  return new_state, metrics


def image_forward(apply_fn):
  def forward(variables, batch):
    out, new_vars = apply_fn(variables, steps.to_float_images(batch['image']), train=True,
                             mutable=['batch_stats'])
    return out['logits'], new_vars.get('batch_stats', variables['batch_stats'])
  return forward


def _feature_forward(num_classes: int, zero_init: bool):
  head = heads.SupervisedHead(num_classes, zero_init)

  def forward(variables, batch):
    logits = head.apply({'params': variables['params']['head_supervised']}, batch['features'])
    return logits, variables['batch_stats']
  return forward


# ---- the job ----


def check_config(config: ml_collections.ConfigDict) -> None:
  """The fields only this job reads; raises validation.ConfigError naming the key."""
  def check(ok, key, value, allowed):
    if not ok:
      raise validation.ConfigError(f'config.{key}={value!r} is invalid; allowed: {allowed}.')
  check(config.mode in MODES, 'mode', config.mode, f"{MODES} here; 'pretrain' is train.py's")
  check(-1 <= config.fine_tune_after_block <= NUM_GROUPS, 'fine_tune_after_block',
        config.fine_tune_after_block, '-1 (train everything), 0 (freeze the stem) .. 4 (head only)')
  check(0 < config.data.label_fraction <= 1, 'data.label_fraction', config.data.label_fraction,
        '(0, 1]; ImageNet 1%/10%: data.dataset=imagenet2012_subset/1pct or /10pct')


def _train(config, workdir, state, batches: Callable[[int], Iterator], forward, labels,
           num_train, mesh, writer) -> loop.Result:
  """The supervised loop (loop.run with the supervised step). Resumes from workdir."""
  lr_fn = optim.create_learning_rate_fn(config, num_train)
  mngr, state, start = loop.restore(config, workdir, state)
  step_fn = jax.jit(functools.partial(train_step, config=config, labels=labels, lr_fn=lr_fn,
                                      forward=forward), donate_argnums=(0,))
  return loop.run(
      config, workdir, mngr=mngr, state=state, start=start,
      total=optim.total_steps(config, num_train), step_fn=step_fn, batches=batches, mesh=mesh,
      writer=writer, loss_key='supervised_loss', unit='ex/s',
      describe=lambda m: (f'loss {m["supervised_loss"]:.4f} acc {m["supervised_acc"]:.3f} '
                          f'lr {m["learning_rate"]:.4f}'))


@dataclasses.dataclass
class _Job:
  """What differs between training the head on precomputed features and training on images."""
  params: Any
  batch_stats: Any
  forward: Callable  # forward(variables, batch) -> (logits, new batch_stats)
  batches: Callable[[int], Iterator]  # batches(start_step) -> host-local batches
  num_train: int
  evaluate: Callable[[steps.TrainState], dict]  # -> {'top1', 'top5', 'num_eval', ...}


def _on_features(config, info, mesh, model, variables) -> _Job:
  """linear_eval.precompute_features: the frozen head inputs of both splits, extracted once
  (gathered to every host, bounded by check_feature_size); the head trains on them."""
  embed = functools.partial(feature_store.make_embed_fn(model.apply, mesh, 'head_input'),
                            variables)
  t = time.time()
  xtr, ytr = feature_store.extract(config, config.data.train_split, info.num_train, mesh, embed)
  xte, yte = feature_store.extract(config, config.data.eval_split, info.num_eval, mesh, embed)
  progress.say(f'Extracted frozen features: train {xtr.shape}, eval {xte.shape} in '
               f'{time.time() - t:.0f} s.')
  if config.data.label_fraction < 1:
    keep = supervised.label_subset(ytr, config.data.label_fraction)
    xtr, ytr = xtr[keep], ytr[keep]

  def evaluate(state):
    dense = jax.device_get(state.params['head_supervised']['dense'])
    head = lambda x: x @ dense['kernel'] + dense['bias']
    return {'top1': feature_store.topk_accuracy(head(xte), yte, 1),
            'top5': feature_store.topk_accuracy(head(xte), yte, 5), 'num_eval': len(yte),
            'train_top1': feature_store.topk_accuracy(head(xtr), ytr, 1)}

  return _Job(
      params={'head_supervised': variables['params']['head_supervised']}, batch_stats={},
      forward=_feature_forward(info.num_classes, config.zero_init_logits_layer),
      batches=functools.partial(supervised.feature_batches, xtr, ytr, config.train.batch_size,
                                config.seed, process_index=jax.process_index(),
                                process_count=jax.process_count()), num_train=len(ytr),
      evaluate=evaluate)


def _on_images(config, info, mesh, model, variables) -> _Job:
  """The paper's protocol: crop + flip views of the (label_fraction of the) train split; the
  eval split's logits stay sharded over the devices."""
  indices = None
  if config.data.label_fraction < 1:  # Each host reads 1/P of the labels; all get all.
    indices = supervised.label_subset(
        feature_store.split_labels(config, config.data.train_split, info.num_train),
        config.data.label_fraction)

  def batches(start):
    return supervised.train_dataset(
        config, process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=start, indices=indices).as_numpy_iterator()

  def evaluate(state):
    fn = feature_store.make_embed_fn(model.apply, mesh, 'logits')
    ev = feature_store.extract_sharded(
        config, config.data.eval_split, info.num_eval, mesh,
        functools.partial(fn, {'params': state.params, 'batch_stats': state.batch_stats}))
    feature_store.check_labels(ev, info.num_classes, 'config.data.eval_split')
    top1, top5 = feature_store.topk_accuracies(ev.outputs, ev, (1, 5))
    return {'top1': top1, 'top5': top5, 'num_eval': int(feature_store.count(ev))}

  return _Job(params=variables['params'], batch_stats=variables['batch_stats'],
              forward=image_forward(model.apply), batches=batches,
              num_train=info.num_train if indices is None else len(indices), evaluate=evaluate)


def prepare_job(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool):
  """(data info, mesh) after the checks every supervised job (linear_eval, finetune, distill)
  makes before compiling anything, on every host: the config against the devices, the data and
  the same files everywhere, then the workdir."""
  validation.validate(config, jax.device_count(), jax.process_count())
  info = sources.get_info(config)
  data_check.check_same_files(config)
  # Whether every host can write and see the workdir comes first: a host that sees another
  # directory would otherwise take other decisions about what it holds.
  checkpointing.check_workdir_writable(workdir)
  cluster.check_shared_workdir(workdir)
  checkpointing.check_resume_config(workdir, config, allow_config_change)
  return info, sharding.make_mesh()


def run(config: ml_collections.ConfigDict, workdir: str,
        allow_config_change: bool = False) -> dict[str, Any]:
  """Linear evaluation or fine-tuning (config.mode) from config.init_checkpoint; returns the
  results dict (also written to workdir/results.json). A rerun on a workdir with checkpoints of
  another config is refused unless `allow_config_change`."""
  t0 = time.time()
  check_config(config)
  pre = pretrained.pretraining_run(config)
  if os.path.abspath(workdir) == os.path.abspath(pre.workdir):
    raise validation.ConfigError('--workdir must differ from config.init_checkpoint (the '
                                 'pretraining checkpoints would be mixed with this job\'s).')
  config = pretrained.merged_config(config, pre.config)
  info, mesh = prepare_job(config, workdir, allow_config_change)
  model = classifier.build_classifier(config, info.num_classes, ops=ops.model_ops(config))
  checkpointing.write_config(workdir, config)
  data_check.announce(config, workdir)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
  linear = config.mode == 'linear_eval'
  precompute = linear and config.linear_eval.precompute_features
  progress.say(
      f'{config.mode}: ResNet-{config.model.resnet_depth} x{config.model.width_multiplier} from '
      f'{config.init_checkpoint} (step {pre.step}); head on projection layer '
      f'{config.model.ft_proj_selector}'
      + ('' if linear else f', fine_tune_after_block {config.fine_tune_after_block}')
      + f'; {info.name} {config.data.train_split} -> {config.data.eval_split}'
      + (f', label_fraction {config.data.label_fraction}' if config.data.label_fraction < 1
         else '') + ('; precomputed features' if precompute else '') + '.')

  if precompute:
    check_feature_size(config, model, info)
  encoder = encoders.load_encoder(pre.workdir, pre.step, mesh=mesh)
  variables = classifier.init_variables(model, encoder.variables, config, mesh)
  job = (_on_features if precompute else _on_images)(config, info, mesh, model, variables)
  labels = classifier.trainable_labels(job.params, config)
  n_train = sum(int(np.prod(x.shape)) for x, l in zip(jax.tree.leaves(job.params),
                                                       jax.tree.leaves(labels)) if l == 'train')
  progress.say(f'{n_train:,} trainable parameters; {job.num_train} labelled examples; global '
               f'batch {config.train.batch_size}; '
               f'{optim.total_steps(config, job.num_train)} steps.')
  # Placed as the step returns it (replicated), or the second step would compile again.
  state = jax.device_put(steps.TrainState.create(
      apply_fn=model.apply, params=job.params, batch_stats=job.batch_stats,
      tx=create_optimizer(config, job.num_train, job.params)), sharding.replicated(mesh))
  run_ = _train(config, workdir, state, job.batches, job.forward, labels, job.num_train, mesh,
                writer)
  step = int(jax.device_get(run_.state.step))
  with loop.exit_on_sigterm(
      f'SIGTERM during the final evaluation: {config.mode} is finished and its checkpoint of '
      f'step {step} is saved in {workdir}/checkpoints; exiting at once, without results. Rerun '
      'the same command to evaluate (no step is trained again).'):
    scores = job.evaluate(run_.state)
  writer.write_scalars(step, {'eval/top1': scores['top1'], 'eval/top5': scores['top5']})
  writer.flush()
  results = {
      'config_name': config.name, 'mode': config.mode,
      'init_checkpoint': config.init_checkpoint, 'init_checkpoint_step': pre.step,
      'dataset': info.name, 'train_split': config.data.train_split,
      'label_fraction': config.data.label_fraction, 'num_train': job.num_train,
      'eval_split': config.data.eval_split, 'top1': scores['top1'], 'top5': scores['top5'],
      'num_eval': scores['num_eval'], 'steps': step, 'skipped_records': run_.skipped_records,
      'precompute_features': bool(precompute),
      'fine_tune_after_block': None if linear else config.fine_tune_after_block,
      'ft_proj_selector': config.model.ft_proj_selector,
      'final_train_metrics': run_.last_metrics, 'train_seconds': run_.train_seconds,
      'wall_clock_seconds': time.time() - t0,
      **{k: v for k, v in scores.items() if k not in ('top1', 'top5', 'num_eval')},
  }
  path = epath.Path(workdir) / RESULTS_FILE
  cluster.process_0_does(lambda: path.write_text(json.dumps(results, indent=2)),
                         f'writing {path}')
  progress.say(format_table(results))
  return results


def check_feature_size(config: ml_collections.ConfigDict, model: classifier.Classifier,
                       info) -> None:
  """Before anything is restored or extracted: precomputed features are gathered to every host
  (train + eval split, float32), so refuse a size past linear_eval.max_host_features_gb."""
  size = config.data.image_size
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  dim = shapes['params']['head_supervised']['dense']['kernel'].shape[0]
  rows = info.num_train + info.num_eval
  gb = rows * dim * 4 / 1e9
  limit = config.linear_eval.get('max_host_features_gb', 4.0)
  if gb > limit:
    raise validation.ConfigError(
        f'config.linear_eval.precompute_features=True would gather {gb:.1f} GB of frozen '
        f'features ({rows:,} examples x {dim} float32) to every host, more than '
        f'linear_eval.max_host_features_gb={limit}: train the head on images instead '
        '(--config.linear_eval.precompute_features=False, the paper\'s protocol), or raise the '
        'limit if every host has the memory.')


def format_table(r: dict[str, Any]) -> str:
  rows = [('job', 'top-1', 'top-5', 'examples'),
          (r['mode'] + (f' (after block {r["fine_tune_after_block"]})'
                        if r['fine_tune_after_block'] is not None else ''),
           f'{r["top1"]:.4f}', f'{r["top5"]:.4f}', str(r['num_eval']))]
  return '\n'.join([
      f'{r["mode"]} of {r["init_checkpoint"]} (step {r["init_checkpoint_step"]}) on '
      f'{r["dataset"]} ({r["eval_split"]} split; {r["num_train"]} labelled train examples, '
      f'{r["steps"]} steps, {r["wall_clock_seconds"]:.0f} s total):', *progress.table(rows)])
