"""run(config, workdir): linear evaluation or fine-tuning on top of a pretraining workdir.

    python -m simclr_jax.main --config=configs/linear_eval.py \
        --config.init_checkpoint=PRETRAIN_WORKDIR --workdir=NEW

The architecture comes from PRETRAIN_WORKDIR/config.json (every `model` field except
`ft_proj_selector`, plus `data.image_size`, which picks the stem); params and BN statistics come
from its latest checkpoint, read by load.load_encoder (init_checkpoint may also name one
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

import functools
import json
import os
import time
from typing import Any, Callable, Iterator

from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from simclr_jax import checkpointing
from simclr_jax import cluster
from simclr_jax import evaluate
from simclr_jax import load
from simclr_jax import loop
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import validation
from simclr_jax.data import input_pipeline
from simclr_jax.data import supervised
from simclr_jax.models import heads
from simclr_jax.models import simclr

MODES = ('linear_eval', 'finetune')
RESULTS_FILE = 'results.json'
NUM_GROUPS = 4
# Fields taken from the pretraining run: they define the architecture of the checkpoint.
ARCHITECTURE_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'proj_head_mode',
                       'proj_out_dim', 'num_proj_layers', 'batch_norm_decay', 'dtype')


# ---- the model ----


class Classifier(nn.Module):
  """images [B,H,W,3] float in [0,1] -> {'head_input': [B, D], 'logits': [B, num_classes]}.

  `linear`: encoder and projection prefix in inference mode under stop_gradient.
  """
  encoder: nn.Module
  proj_head: nn.Module
  num_classes: int
  zero_init: bool = False
  linear: bool = True

  @nn.compact
  def __call__(self, images, train: bool = False):
    body_train = train and not self.linear
    x, _ = self.proj_head(self.encoder(images, train=body_train), train=body_train)
    if self.linear:
      x = jax.lax.stop_gradient(x)
    logits = heads.SupervisedHead(self.num_classes, self.zero_init, name='head_supervised')(x)
    return {'head_input': x, 'logits': logits}


def num_proj_hiddens(model_cfg: ml_collections.ConfigDict) -> int:
  return {'none': 1, 'linear': 2, 'nonlinear': model_cfg.num_proj_layers + 1}[
      model_cfg.proj_head_mode]


def build_classifier(config: ml_collections.ConfigDict, num_classes: int) -> Classifier:
  """The Classifier for config.mode from config.model (already merged with the pretraining run's)."""
  m = config.model
  dtype = simclr.dtype_from_name(m.dtype)
  linear = config.mode == 'linear_eval'
  encoder = models.build_encoder(m.resnet_depth, m.width_multiplier, m.sk_ratio,
                                 cifar_stem=config.data.image_size <= 32, dtype=dtype,
                                 bn_momentum=m.batch_norm_decay,
                                 conv_impl=models.resolve_conv_impl(config))
  if not linear:
    encoder = encoder.clone(fine_tune_after_block=config.fine_tune_after_block)
  keep = m.ft_proj_selector % num_proj_hiddens(m)
  proj = heads.ProjectionHead(mode=m.proj_head_mode, out_dim=m.proj_out_dim,
                              num_layers=m.num_proj_layers, bn_momentum=m.batch_norm_decay,
                              dtype=dtype, keep_layers=keep)  # Its z is hiddens[keep].
  return Classifier(encoder, proj, num_classes, config.zero_init_logits_layer, linear)


def trainable_labels(params, config: ml_collections.ConfigDict) -> Any:
  """'train' / 'frozen' per leaf: linear_eval trains the head only; finetune freezes the stem and
  groups 1..fine_tune_after_block."""
  k = config.fine_tune_after_block

  def label(path, _):
    names = [str(getattr(p, 'key', p)) for p in path]
    if names[0] == 'head_supervised':
      return 'train'
    if config.mode == 'linear_eval':
      return 'frozen'
    if names[0] == 'encoder':
      part = names[1]
      group = int(part[len('group')]) if part.startswith('group') else 0  # 0: the stem.
      return 'frozen' if group <= k else 'train'
    return 'train'  # The kept projection layers are fine-tuned.

  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(config, num_examples: int, params) -> optax.GradientTransformation:
  """optim.create_optimizer on the trainable leaves; frozen leaves get exactly zero updates."""
  return optax.multi_transform(
      {'train': optim.create_optimizer(config, num_examples), 'frozen': optax.set_to_zero()},
      trainable_labels(params, config))


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


# ---- restoring the pretraining run ----


def pretraining_run(config: ml_collections.ConfigDict) -> load.Checkpoint:
  """The checkpoint config.init_checkpoint names (a pretraining workdir: its newest checkpoint;
  or one of its checkpoints/<step> directories), with the run's config; a clear ConfigError,
  before anything is compiled, if it is not a pretraining workdir with a checkpoint. Process 0
  decides (its listing, its reading) and every process gets its answer."""
  src = config.init_checkpoint
  if not src:
    raise validation.ConfigError(
        f'config.mode={config.mode!r} needs --config.init_checkpoint=PRETRAIN_WORKDIR (the '
        '--workdir of a pretraining run, holding config.json and checkpoints/).')

  def find():  # Process 0 lists and decides: every host restores the same step.
    try:
      found = load.locate(src)
    except (FileNotFoundError, ValueError) as e:  # No config.json or checkpoint; not pretraining.
      raise validation.ConfigError(f'config.init_checkpoint={src!r}: {e}') from e
    return {'workdir': found.workdir, 'step': found.step, 'config': found.config.to_dict()}

  found = cluster.process_0_does(find, f'locating config.init_checkpoint={src!r}')
  return load.Checkpoint(found['workdir'], int(found['step']),
                         ml_collections.ConfigDict(found['config']))


def merged_config(config: ml_collections.ConfigDict,
                  pre: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the architecture (model fields, data.image_size) of the pretraining run."""
  out = ml_collections.ConfigDict(config.to_dict())  # A copy (placeholders become values).
  for key in ARCHITECTURE_FIELDS:
    if key in pre.model:
      out.model[key] = type(config.model[key])(pre.model[key])
  if 'data' in pre and 'image_size' in pre.data:
    if pre.data.image_size != config.data.image_size:
      progress.say(f'Using the pretraining run\'s image size {pre.data.image_size} (config had '
           f'{config.data.image_size}).')
    out.data.image_size = int(pre.data.image_size)
  out.lock()
  return out


def restore_pretrained(workdir: str, step: int, mesh) -> dict[str, Any]:
  """{'params', 'batch_stats'} of a simclr_jax checkpoint, replicated on `mesh`; the optimiser
  state is not read."""
  return load.restore_variables(workdir, step, sharding.replicated(mesh))


def init_variables(model: Classifier, pretrained: dict[str, Any], config, mesh
                   ) -> dict[str, Any]:
  """Classifier variables: the pretrained encoder/projection layers plus a fresh head."""
  size = config.data.image_size
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  head_in = shapes['params']['head_supervised']['dense']['kernel'].shape[0]
  head = heads.SupervisedHead(model.num_classes, model.zero_init)
  head_params = jax.device_put(
      head.init(jax.random.key(config.seed), jnp.zeros((1, head_in)))['params'],
      sharding.replicated(mesh))

  def take(collection):
    target = shapes.get(collection, {})
    out = {}
    for name, sub in target.items():
      if name == 'head_supervised':
        out[name] = head_params
      elif name == 'encoder':
        out[name] = pretrained[collection]['encoder']
      else:  # proj_head: only the kept layers.
        out[name] = {k: pretrained[collection][name][k] for k in sub}
    got = jax.tree.map(lambda x: (x.shape, x.dtype), out)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), dict(target))
    if got != want:
      raise ValueError(f'The checkpoint\'s {collection} do not fit the rebuilt model; was it '
                       'written by a different simclr_jax version?')
    return out

  return {'params': take('params'), 'batch_stats': take('batch_stats')}


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


def _image_forward(apply_fn):
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


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                    start_step: int = 0, process_index: int = 0, process_count: int = 1
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite host-local {'features', 'label'} batches: epoch e is a permutation seeded by
  (seed, e); global batch t is elements [t*B, (t+1)*B) of the concatenated epochs (resumable,
  like the image stream), and this process yields its rows [p*B/P, (p+1)*B/P) of it, so each
  example appears once per global batch whatever the number of processes."""
  b = input_pipeline.per_process_batch(batch_size, process_count)
  n = len(labels)
  if n < batch_size:
    raise ValueError(f'config.train.batch_size={batch_size} exceeds the {n} labelled examples.')

  @functools.lru_cache(maxsize=3)
  def perm(e):
    return np.random.RandomState([seed, e]).permutation(n)

  t = start_step
  while True:
    e, p = divmod(t * batch_size, n)
    sel = np.concatenate([perm(e), perm(e + 1)])[p:p + batch_size]  # B <= n: two epochs at most.
    sel = sel[process_index * b:(process_index + 1) * b]
    yield {'features': features[sel], 'label': labels[sel]}
    t += 1


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


def run(config: ml_collections.ConfigDict, workdir: str,
        allow_config_change: bool = False) -> dict[str, Any]:
  """Linear evaluation or fine-tuning (config.mode) from config.init_checkpoint; returns the
  results dict (also written to workdir/results.json). A rerun on a workdir with checkpoints of
  another config is refused unless `allow_config_change`."""
  t0 = time.time()
  check_config(config)
  pre = pretraining_run(config)
  init_step = pre.step
  if os.path.abspath(workdir) == os.path.abspath(pre.workdir):
    raise validation.ConfigError('--workdir must differ from config.init_checkpoint (the '
                                 'pretraining checkpoints would be mixed with this job\'s).')
  config = merged_config(config, pre.config)
  validation.validate(config, jax.device_count(), jax.process_count())
  info = input_pipeline.get_info(config)
  # Whether every host can write and see the workdir comes first: a host that sees another
  # directory would otherwise take other decisions about what it holds.
  checkpointing.check_workdir_writable(workdir)
  cluster.check_shared_workdir(workdir)
  checkpointing.check_resume_config(workdir, config, allow_config_change)
  mesh = sharding.make_mesh()
  model = build_classifier(config, info.num_classes)
  checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
  linear = config.mode == 'linear_eval'
  precompute = linear and config.linear_eval.precompute_features
  progress.say(
      f'{config.mode}: ResNet-{config.model.resnet_depth} x{config.model.width_multiplier} from '
      f'{config.init_checkpoint} (step {init_step}); head on projection layer '
      f'{config.model.ft_proj_selector}'
      + ('' if linear else f', fine_tune_after_block {config.fine_tune_after_block}')
      + f'; {info.name} {config.data.train_split} -> {config.data.eval_split}'
      + (f', label_fraction {config.data.label_fraction}' if config.data.label_fraction < 1
         else '') + ('; precomputed features' if precompute else '') + '.')

  if precompute:
    check_feature_size(config, model, info)
  encoder = load.load_encoder(pre.workdir, init_step, mesh=mesh)
  variables = init_variables(model, encoder.variables, config, mesh)
  extra = {}
  if precompute:
    embed = functools.partial(evaluate.make_embed_fn(model.apply, mesh, 'head_input'), variables)
    t = time.time()
    xtr, ytr = evaluate.extract(config, config.data.train_split, info.num_train, mesh, embed)
    xte, yte = evaluate.extract(config, config.data.eval_split, info.num_eval, mesh, embed)
    progress.say(f'Extracted frozen features: train {xtr.shape}, eval {xte.shape} in '
         f'{time.time() - t:.0f} s.')
    if config.data.label_fraction < 1:
      keep = supervised.label_subset(ytr, config.data.label_fraction)
      xtr, ytr = xtr[keep], ytr[keep]
    num_train = len(ytr)
    params = {'head_supervised': variables['params']['head_supervised']}
    batch_stats = {}
    forward = _feature_forward(info.num_classes, config.zero_init_logits_layer)
    batches = functools.partial(feature_batches, xtr, ytr, config.train.batch_size, config.seed,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  else:
    indices = None
    if config.data.label_fraction < 1:  # Each host reads 1/P of the labels; all get all.
      indices = supervised.label_subset(
          evaluate.split_labels(config, config.data.train_split, info.num_train),
          config.data.label_fraction)
    num_train = info.num_train if indices is None else len(indices)
    params, batch_stats = variables['params'], variables['batch_stats']
    forward = _image_forward(model.apply)

    def batches(start):
      return supervised.train_dataset(
          config, process_index=jax.process_index(), process_count=jax.process_count(),
          start_step=start, indices=indices).as_numpy_iterator()

  labels = trainable_labels(params, config)
  n_train = sum(int(np.prod(x.shape)) for x, l in zip(jax.tree.leaves(params),
                                                       jax.tree.leaves(labels)) if l == 'train')
  progress.say(f'{n_train:,} trainable parameters; {num_train} labelled examples; global batch '
       f'{config.train.batch_size}; {optim.total_steps(config, num_train)} steps.')
  state = steps.TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                                  tx=create_optimizer(config, num_train, params))
  run_ = _train(config, workdir, state, batches, forward, labels, num_train, mesh, writer)
  state, last, train_seconds = run_.state, run_.last_metrics, run_.train_seconds
  step = int(jax.device_get(state.step))

  with loop.exit_on_sigterm(
      f'SIGTERM during the final evaluation: {config.mode} is finished and its checkpoint of '
      f'step {step} is saved in {workdir}/checkpoints; exiting at once, without results. Rerun '
      'the same command to evaluate (no step is trained again).'):
    if precompute:
      dense = jax.device_get(state.params['head_supervised']['dense'])
      logits = xte @ dense['kernel'] + dense['bias']
      extra['train_top1'] = evaluate.topk_accuracy(xtr @ dense['kernel'] + dense['bias'], ytr, 1)
      top1, top5 = (evaluate.topk_accuracy(logits, yte, k) for k in (1, 5))
      num_eval = len(yte)
    else:  # The eval split's logits stay sharded over the devices.
      fn = evaluate.make_embed_fn(model.apply, mesh, 'logits')
      ev = evaluate.extract_sharded(config, config.data.eval_split, info.num_eval, mesh,
                                    functools.partial(fn, {'params': state.params,
                                                           'batch_stats': state.batch_stats}))
      evaluate.check_labels(ev, info.num_classes, 'config.data.eval_split')
      top1, top5 = evaluate.topk_accuracies(ev.outputs, ev, (1, 5))
      num_eval = evaluate.count(ev)
  writer.write_scalars(step, {'eval/top1': top1, 'eval/top5': top5})
  writer.flush()
  results = {
      'config_name': config.name, 'mode': config.mode,
      'init_checkpoint': config.init_checkpoint, 'init_checkpoint_step': init_step,
      'dataset': info.name, 'train_split': config.data.train_split,
      'label_fraction': config.data.label_fraction, 'num_train': num_train,
      'eval_split': config.data.eval_split, 'top1': top1, 'top5': top5,
      'num_eval': int(num_eval), 'steps': step, 'skipped_records': run_.skipped_records,
      'precompute_features': bool(precompute),
      'fine_tune_after_block': None if linear else config.fine_tune_after_block,
      'ft_proj_selector': config.model.ft_proj_selector,
      'final_train_metrics': last, 'train_seconds': train_seconds,
      'wall_clock_seconds': time.time() - t0, **extra,
  }
  path = epath.Path(workdir) / RESULTS_FILE
  cluster.process_0_does(lambda: path.write_text(json.dumps(results, indent=2)),
                         f'writing {path}')
  progress.say(format_table(results))
  return results


def check_feature_size(config: ml_collections.ConfigDict, model: Classifier, info) -> None:
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
  widths = [max(len(row[i]) for row in rows) for i in range(4)]
  lines = [f'{r["mode"]} of {r["init_checkpoint"]} (step {r["init_checkpoint_step"]}) on '
           f'{r["dataset"]} ({r["eval_split"]} split; {r["num_train"]} labelled train examples, '
           f'{r["steps"]} steps, {r["wall_clock_seconds"]:.0f} s total):']
  for i, row in enumerate(rows):
    lines.append('  ' + '  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                                  for j, (c, w) in enumerate(zip(row, widths))))
    if i == 0:
      lines.append('  ' + '  '.join('-' * w for w in widths))
  return '\n'.join(lines)
