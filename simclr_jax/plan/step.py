"""Compile (never run) the real training step of config.mode (pretraining, linear evaluation or
fine-tuning) for a list of devices and read what the compiler says about it: memory per device,
FLOPs, bytes accessed, the TPU cost model's step time, and the collectives between devices.

The devices are either emulated CPU devices (XLA:CPU; an estimate for chips libtpu cannot
target) or a TPU topology's compile-only devices (plan/tpu.py), for which the numbers are the TPU
compiler's own. Nothing is scaled: the step is compiled at the real per-device batch and image
size; the SPMD partitioner emits the one program each device runs, so XLA's counts are per device.
"""

import dataclasses
import time
from typing import Optional

import numpy as np

from simclr_jax.plan import collectives
from simclr_jax.plan import jobs


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the compiler and the analytic count say about one step. Bytes, XLA FLOPs, bytes
  accessed and `optimal_seconds` (the TPU cost model; None on CPU) are per device; `analytic` and
  `analytic_valid` (flops.step_flops) are global."""
  num_devices: int
  num_params: int
  encoder_params: int
  nbytes: dict
  xla_flops: float
  forward_macs: int
  analytic: dict
  analytic_valid: dict
  lower_s: float
  compile_s: float
  platform: str = 'cpu'
  bytes_accessed: float = 0.0
  optimal_seconds: Optional[float] = None
  collectives: Optional[dict] = None


class DoesNotFit(RuntimeError):
  """The TPU compiler refused the program for lack of memory (its message, first line)."""


def _device_bytes(leaves) -> int:
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)


def memory(compiled) -> dict:
  """XLA's memory_analysis of one device's program; total = arguments + temporaries + outputs
  not aliased to donated arguments."""
  m = compiled.memory_analysis()
  out = {'arguments': m.argument_size_in_bytes, 'temp': m.temp_size_in_bytes,
         'outputs': m.output_size_in_bytes, 'alias': m.alias_size_in_bytes}
  out['total'] = out['arguments'] + out['temp'] + out['outputs'] - out['alias']
  return out


def cost(compiled) -> dict:
  c = compiled.cost_analysis()
  return c[0] if isinstance(c, (list, tuple)) else c  # Older JAX: one dict per module.


def _optimal_seconds(c: dict) -> Optional[float]:
  """The TPU cost model's step time; None where it has none (libtpu 0.0.42.1 returns a negative
  number for v5e)."""
  t = c.get('optimal_seconds')
  return float(t) if t is not None and t > 0 else None


def compile_step(step, state, batch):
  """(compiled, lower seconds, compile seconds); DoesNotFit when the TPU compiler runs out of
  memory (XLA:CPU never does)."""
  t = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - t
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # jax raises JaxRuntimeError.
    text = str(e)
    if 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower():
      raise DoesNotFit(text.strip().splitlines()[0][:300]) from e
    raise
  return compiled, lower_s, time.perf_counter() - t - lower_s


def compile_plan(config, devices, num_train: int, num_classes: int,
                 teacher_config=None) -> Plan:
  """Lowers and compiles the train step for `devices` (or the first N local devices if an int);
  teacher_config: distillation's teacher architecture (None: the student's)."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax.plan import flops  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import resnet  # pylint: disable=g-import-not-at-top
  if isinstance(devices, int):
    if jax.device_count() < devices:
      raise ValueError(f'{devices} devices wanted, {jax.device_count()} present: set XLA_FLAGS='
                       f'--xla_force_host_platform_device_count={devices} before JAX starts.')
    devices = jax.devices()[:devices]
  n = len(devices)
  step, state, batch, model = jobs.abstract_job_step(config, devices, num_train, num_classes,
                                                     teacher_config)
  teacher_macs = (0, 0)  # Distillation's frozen teacher: forward MACs per image (padded, valid).
  if config.mode == 'distill':
    model, teacher = model
    shape = (config.data.image_size,) * 2 + (3,)
    teacher_macs = tuple(flops.forward_macs(flops.layers(teacher, shape, valid_only=v))
                         for v in (False, True))
  compiled, lower_s, compile_s = compile_step(step, state, batch)
  c = cost(compiled)
  nbytes = dict(memory(compiled),
                params=_device_bytes(jax.tree.leaves(state.params)),
                opt_state=_device_bytes(jax.tree.leaves(state.opt_state)),
                other_state=_device_bytes(jax.tree.leaves((state.step, state.batch_stats))),
                batch=_device_bytes(jax.tree.leaves(batch)),
                teacher=_device_bytes(jax.tree.leaves(getattr(step, 'teacher_variables', {}))))
  m, size, b = config.model, config.data.image_size, config.train.batch_size
  proj_dim = (resnet.feature_dim(m.resnet_depth, m.width_multiplier)
              if m.proj_head_mode == 'none' else m.proj_out_dim)
  padded = flops.layers(model, (size, size, 3))
  valid = flops.layers(model, (size, size, 3), valid_only=True)
  if config.mode == 'pretrain':
    analytic = flops.step_flops(padded, b, proj_dim), flops.step_flops(valid, b, proj_dim)
  else:
    trained = _trained_layers(config, state.params)
    analytic = (flops.supervised_step_flops(padded, b, trained, teacher_macs[0]),
                flops.supervised_step_flops(valid, b, trained, teacher_macs[1]))
  count = lambda tree: int(parameter_overview.count_parameters(tree))
  platform = devices[0].platform
  return Plan(n, count(state.params), count(state.params['encoder']), nbytes,
              float(c['flops']), flops.forward_macs(padded),
              *analytic,
              lower_s, compile_s, platform, float(c.get('bytes accessed', 0.0)),
              _optimal_seconds(c) if platform == 'tpu' else None,
              collectives.summarise(compiled.as_text()))


def _trained_layers(config, params):
  """layer name -> whether it trains (classifier.trainable_labels of the params under it)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import classifier  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(classifier.trainable_labels(params, config), sep='/')
  return lambda name: any(v == 'train' for k, v in flat.items() if k.startswith(name + '/'))


def max_batch(config, devices, num_train: int, num_classes: int, memory_bytes: int,
              headroom: float = 0.10, granularity: int = 8, log=print, teacher_config=None
              ) -> tuple[int, dict]:
  """The largest global batch (a multiple of granularity x devices) whose step the compiler
  fits in (1 - headroom) x memory_bytes per device, by doubling then bisection; and
  {global batch: total bytes per device or None (did not compile: out of memory)} tried."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  n, tried = len(devices), {}

  def fits(per_device: int) -> bool:
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.batch_size = per_device * n
    t = time.perf_counter()
    try:
      compiled, _, _ = compile_step(*jobs.abstract_job_step(c, devices, num_train, num_classes,
                                                              teacher_config)[:3])
      total = memory(compiled)['total']
    except DoesNotFit:
      total = None
    tried[per_device * n] = total
    ok = total is not None and total <= (1 - headroom) * memory_bytes
    log(f'  B {per_device * n:6d} ({per_device} per device): '
        + (f'{total / 2**30:.2f} GiB' if total is not None else 'out of memory')
        + f' -> {"fits" if ok else "does not fit"} ({time.perf_counter() - t:.0f} s)')
    return ok

  down = lambda x: x // granularity * granularity
  lo, hi = 0, max(granularity, down(config.train.batch_size // n))
  while fits(hi):  # Double until it does not fit ...
    lo, hi = hi, 2 * hi
  while not lo and hi > granularity:  # ... or halve until it does.
    half = max(granularity, down(hi // 2))
    if fits(half):
      lo = half
    else:
      hi = half
  while hi - lo > granularity:  # Bisect: lo fits (or is 0), hi does not.
    mid = down((lo + hi) // 2)
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo * n, tried
