"""The evaluation part of the compile-only plan: per-device memory and the cost of evaluation.

`compile_eval_plan` lowers and compiles (never runs) every function that touches a split's
features after extraction, for abstract inputs of the config's real sizes (ImageNet: 1.28M x 2048
probe-split features, the kNN bank, 50k eval features and [50k, 1000] online-probe logits, rows
padded to whole eval batches) sharded over N emulated CPU devices, and reads XLA's
memory_analysis of each. Nothing is allocated: on one 2-core CPU the whole set compiles in
seconds for 128 devices. tests/test_eval_scaling.py asserts its bounds for configs/tpu_v3_128.py.

`eval_cost` counts what evaluation adds to a run, in images through the encoder, against the
pretraining it interrupts; the ImageNet configs' docstrings quote it.

XLA_FLAGS must give the device count before JAX is imported (plan.main does; tests run it in a
subprocess), so JAX and the evaluation modules are imported inside the functions.
"""

import dataclasses
import time
from typing import Optional

MIB = 2 ** 20
TRAIN_FORWARDS = 6  # A pretraining image: 2 views x (forward + backward ~ 3 forward passes).


FUNCTIONS = {  # What compile_eval_plan compiles, by key.
    'store': 'extract: store a batch of probe-split features (in place)',
    'knn': 'kNN scores (config\'s bank)',
    'knn_whole': 'kNN scores (whole probe split as bank)',
    'online_acc': 'online probe top-1/top-5 ([eval, classes] logits)',
    'moments': 'linear probe: feature moments',
    'fit': 'linear probe: minibatch training',
    'probe_acc': 'linear probe: accuracy over the probe split',
}


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """Per device, in bytes: `shards` the feature arrays each device keeps ({'bank', 'probe',
  'eval'}), `functions` XLA's memory analysis per compiled evaluation function (arguments,
  temp, outputs, alias, total = arguments + temp + outputs - alias)."""
  num_devices: int
  feature_dim: int
  rows: dict
  shards: dict
  functions: dict
  compile_s: float


@dataclasses.dataclass(frozen=True)
class EvalCost:
  """Images through the encoder for evaluation over a whole run, against pretraining's."""
  monitors: int  # Monitor evaluations: every train.eval_every_epochs, and the final one.
  per_monitor: int  # kNN bank + eval split images, each monitor.
  final_extra: int  # The probe split once more (if the bank is a subset) and any baselines.
  label_pass: int  # Records read (labels only, no decoding) to pick a bank subset, once.
  eval_images: int
  train_images: int  # epochs x train split (each decoded once per epoch, 2 views from it).
  compute_fraction: float  # Eval forward passes / pretraining's (TRAIN_FORWARDS per image).
  host_fraction: float  # (Eval images + label pass) / train images: if decoding sets the pace.


def padded_rows(num_examples: int, global_batch: int, process_count: int = 1) -> int:
  """Rows of an extracted split: whole eval batches (input_pipeline.num_eval_batches)."""
  b = global_batch // process_count
  return -(-(-(-num_examples // process_count)) // b) * global_batch


def bank_size(config, num_probe: int) -> int:
  """Examples in the kNN bank (whole classes' quota; about knn_bank_size)."""
  size = config.eval.knn_bank_size
  return num_probe if size <= 0 or size >= num_probe else size


def _analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {'arguments': m.argument_size_in_bytes, 'temp': m.temp_size_in_bytes,
         'outputs': m.output_size_in_bytes, 'alias': m.alias_size_in_bytes}
  out['total'] = out['arguments'] + out['temp'] + out['outputs'] - out['alias']
  return out


def compile_eval_plan(config, devices, num_probe: int, num_eval: int,
                      num_classes: int, only: Optional[tuple[str, ...]] = None) -> EvalPlan:
  """Compiles the evaluation functions (FUNCTIONS; `only` those keys) for `devices` (a list, or
  N: the first N JAX devices); the result's `functions` are keyed like FUNCTIONS."""
  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluators import feature_store  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluators import linear_probe  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluators import knn  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import resnet  # pylint: disable=g-import-not-at-top
  devices = jax.devices()[:devices] if isinstance(devices, int) else list(devices)
  num_devices = len(devices)
  mesh = sharding.make_mesh(devices)
  rows_s, rep = sharding.batch_sharded(mesh), sharding.replicated(mesh)
  e, b = config.eval, config.eval.batch_size
  d = resnet.feature_dim(config.model.resnet_depth, config.model.width_multiplier)
  rows = {'bank': padded_rows(bank_size(config, num_probe), b),
          'probe': padded_rows(num_probe, b), 'eval': padded_rows(num_eval, b)}

  def arr(shape, dtype=jnp.float32, s=rows_s):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

  def meta(r):
    return {'label': arr((r,), jnp.int32), 'mask': arr((r,)), 'index': arr((r,), jnp.int32)}

  def feats(r):
    return arr((r, d))

  rp, re_ = rows['probe'], rows['eval']
  vec = arr((d,), s=rep)
  params = {'w': arr((d, num_classes), s=rep), 'b': arr((num_classes,), s=rep)}
  k = int(min(e.knn_k, bank_size(config, num_probe)))
  knn_kw = dict(mesh=mesh, num_classes=num_classes, k=k, chunk_size=e.knn_chunk_size,
                bank_chunk_size=knn.BANK_CHUNK)
  spe = max(1, int(round(num_probe / e.probe_batch_size)))
  jobs = {
      'store': (
          feature_store.write_rows, ((feats(rp), meta(rp)), (feats(b), meta(b)), jnp.int32(0)),
          dict(mesh=mesh)),
      'knn': (
          knn.scores_sharded,
          (feats(rows['bank']), arr((rows['bank'],), jnp.int32), arr((rows['bank'],), jnp.bool_),
           feats(re_), jnp.float32(0.1)), knn_kw),
      'online_acc': (
          feature_store.topk_correct,
          (arr((re_, num_classes)), arr((re_,), jnp.int32), arr((re_,))),
          dict(ks=(1, min(5, num_classes)), mesh=mesh)),
      'moments': (
          linear_probe.moments, (feats(rp), arr((rp,))), dict(mesh=mesh)),
      'fit': (
          linear_probe.fit_sharded,
          (feats(rp), *meta(rp).values(), vec, vec, jnp.float32(0.01), jnp.float32(1e-4)),
          dict(mesh=mesh, num_classes=num_classes, steps=int(e.probe_steps),
               steps_per_epoch=spe, capacity=linear_probe.probe_capacity(rp // num_devices, spe),
               seed=0)),
      'probe_acc': (
          linear_probe.probe_correct,
          (feats(rp), arr((rp,), jnp.int32), arr((rp,)), vec, vec, params),
          dict(mesh=mesh, ks=(1, min(5, num_classes)))),
  }
  if rows['bank'] != rp:
    jobs['knn_whole'] = (
        knn.scores_sharded,
        (feats(rp), arr((rp,), jnp.int32), arr((rp,), jnp.bool_), feats(re_), jnp.float32(0.1)),
        dict(knn_kw, k=int(min(e.knn_k, num_probe))))
  t = time.perf_counter()
  functions = {name: _analysis(fn.lower(*args, **kw).compile())
               for name, (fn, args, kw) in jobs.items() if only is None or name in only}
  compile_s = time.perf_counter() - t
  shard = lambda r, width: r // num_devices * width * 4
  shards = {'bank': shard(rows['bank'], d + 3), 'probe': shard(rp, d + 3),
            'eval': shard(re_, d + num_classes + 3)}  # + label, mask, index (4 bytes each).
  return EvalPlan(num_devices, d, rows, shards, functions, compile_s)


def eval_cost(config, num_train: int, num_probe: int, num_eval: int) -> EvalCost:
  """What evaluation adds to a run of `config` (see EvalCost)."""
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  total = optim.total_steps(config, num_train)
  every = train.eval_every_steps(config, num_train)
  monitors = 1 + (len([s for s in range(every, total, every)]) if every else 0)
  bank = bank_size(config, num_probe)
  per_monitor = bank + num_eval
  subset = bank < num_probe
  final_extra = (num_probe if subset else 0) + (
      2 * (num_probe + num_eval) if config.eval.baselines else 0)  # Random init + pixels.
  label_pass = num_probe if subset else 0
  eval_images = monitors * per_monitor + final_extra
  train_images = total * config.train.batch_size
  return EvalCost(monitors, per_monitor, final_extra, label_pass, eval_images, train_images,
                  eval_images / (TRAIN_FORWARDS * train_images),
                  (eval_images + label_pass) / train_images)


def format_eval(plan: EvalPlan, cost: EvalCost, memory_bytes: int, compiler: str = '') -> str:
  """The plan's evaluation section."""
  n = plan.num_devices
  lines = [
      f'evaluation memory per device (XLA memory_analysis; {n} devices, features [rows, '
      f'{plan.feature_dim}] float32 sharded over them, never gathered):',
      f'  {"features kept per device (+ label, mask, index)":56s} {"MiB":>10s}']
  for name, label in (('bank', 'kNN bank'), ('probe', 'probe split'),
                      ('eval', 'eval split (+ online-probe logits)')):
    lines.append(f'  {f"{label}, {plan.rows[name]:,} rows / {n}":56s} '
                 f'{plan.shards[name] / MIB:10.1f}')
  lines.append(f'  {"function (compiled, not run)":56s} {"args MiB":>10s} {"temp MiB":>10s} '
               f'{"total MiB":>10s}')
  for name, b in plan.functions.items():
    lines.append(f'  {FUNCTIONS[name]:56s} {b["arguments"] / MIB:10.1f} {b["temp"] / MIB:10.1f} '
                 f'{b["total"] / MIB:10.1f}')
  worst = max(b['total'] for b in plan.functions.values())
  lines += [
      f'  largest: {worst / MIB:.1f} MiB = {worst / memory_bytes:.2%} of the device\'s '
      f'{memory_bytes / 2**30:.2f} GiB; compiled in {plan.compile_s:.1f} s'
      + (f' by the {compiler} compiler' if compiler else ''),
      '',
      f'evaluation cost: {cost.monitors} monitor evaluations x {cost.per_monitor:,} images '
      f'(kNN bank + eval split) + {cost.final_extra:,} at the end'
      + (f' + a label-only pass over {cost.label_pass:,} records to pick the bank'
         if cost.label_pass else '')
      + f' = {cost.eval_images:,} images against {cost.train_images:,} pretraining images:',
      f'  {cost.compute_fraction:.2%} of the run if the accelerators set the pace (an eval image '
      f'is 1 forward pass, a training image {TRAIN_FORWARDS}), {cost.host_fraction:.2%} if '
      'input decoding does (one decode each).']
  return '\n'.join(lines)
