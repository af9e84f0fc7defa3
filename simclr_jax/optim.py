"""Learning-rate scaling, warmup + cosine schedule, and the optimisers (LARS, momentum, Adam).

Step arithmetic is the official one (tf2/model.py WarmUpAndCosineDecay):
  total_steps  = train.steps if > 0 else num_examples * epochs // batch + 1
  warmup_steps = int(round(warmup_epochs * num_examples // batch))
  lr(step)     = scaled * step / warmup_steps                         for step < warmup_steps
               = scaled * 0.5 * (1 + cos(pi * (step - W) / (T - W)))  afterwards
where the first update uses step 0 (so its learning rate is 0).

LARS follows the official masks: BN parameters, biases and the supervised head get NEITHER weight
decay NOR trust-ratio adaptation; the supervised head's kernel gets an explicit L2 loss instead
(`supervised_head_l2`), as `add_weight_decay` does for LARS in the official code. For 'momentum'
and 'adam', the official code puts all weight decay into the loss, on every non-BN weight (biases
and the supervised head included): `weight_decay_loss` does the same, and the optimisers are plain.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ('lars', 'momentum', 'adam')
LR_SCALINGS = ('linear', 'sqrt')
SUPERVISED_HEAD = 'head_supervised'


def scaled_learning_rate(base: float, batch_size: int, scaling: str) -> float:
  """base * B / 256 ('linear') or base * sqrt(B) ('sqrt')."""
  if scaling == 'linear':
    return base * batch_size / 256.0
  if scaling == 'sqrt':
    return base * math.sqrt(batch_size)
  raise ValueError(f'config.optim.learning_rate_scaling={scaling!r}; allowed: {LR_SCALINGS}.')


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  if config.train.steps > 0:
    return int(config.train.steps)
  return num_examples * config.train.epochs // config.train.batch_size + 1


def warmup_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  # Official: int(round(warmup_epochs * num_examples // batch)) with float floor division.
  return int(round(config.optim.warmup_epochs * num_examples // config.train.batch_size))


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            num_examples: int) -> Callable[[Any], jax.Array]:
  """The optax schedule: step (int) -> learning rate (float32)."""
  peak = scaled_learning_rate(config.optim.learning_rate, config.train.batch_size,
                              config.optim.learning_rate_scaling)
  total = total_steps(config, num_examples)
  warmup = warmup_steps(config, num_examples)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup, 1)
    progress = jnp.minimum(step - warmup, total - warmup) / max(total - warmup, 1)
    cosine = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm, cosine).astype(jnp.float32)

  return schedule


def _path_names(path) -> list[str]:
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def is_adapted(path) -> bool:
  """True for weights that get weight decay and the LARS trust ratio: conv/dense kernels outside
  the supervised head. BN scale/bias, every bias and the supervised head are excluded."""
  names = _path_names(path)
  return names[-1] == 'kernel' and SUPERVISED_HEAD not in names


def adaptation_mask(params) -> Any:
  """Pytree of bools matching `params`: which leaves LARS decays and adapts."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_adapted(p), params)


def supervised_head_l2(params, weight_decay: float) -> jax.Array:
  """weight_decay * sum(w^2)/2 over supervised-head kernels (tf.nn.l2_loss convention)."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = _path_names(path)
    if SUPERVISED_HEAD in names and names[-1] == 'kernel':
      total = total + 0.5 * jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return weight_decay * total


def is_batch_norm(path) -> bool:
  """BN scale/bias live under a module named 'bn' (models.resnet.BatchNormRelu)."""
  names = _path_names(path)
  return len(names) >= 2 and names[-2] == 'bn'


def weight_decay_loss(params, optimizer: str, weight_decay: float) -> jax.Array:
  """The L2 term the official `add_weight_decay` adds to the loss (sum(w^2)/2 convention).

  'lars': the supervised head's kernel only (LARS decays the rest itself); 'momentum'/'adam':
  every parameter except BatchNorm's.
  """
  if optimizer == 'lars':
    return supervised_head_l2(params, weight_decay)
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if not is_batch_norm(path):
      total = total + 0.5 * jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return weight_decay * total


def create_optimizer(config: ml_collections.ConfigDict,
                     num_examples: int) -> optax.GradientTransformation:
  """The optimiser named by config.optim.optimizer, driven by `create_learning_rate_fn`.

  'lars': optax.lars with the official masks (weight decay and trust ratio on adapted kernels
  only, eps 0, classic momentum with the learning rate inside the trace, no Nesterov).
  'momentum': Nesterov SGD (linear eval / fine-tuning); 'adam': Adam. For these two the weight
  decay is NOT in the optimiser: add `weight_decay_loss` to the loss, as the official code does.
  """
  o = config.optim
  lr = create_learning_rate_fn(config, num_examples)
  if o.optimizer == 'lars':
    return optax.lars(lr, weight_decay=o.weight_decay, weight_decay_mask=adaptation_mask,
                      trust_coefficient=o.trust_coefficient, eps=0.0,
                      trust_ratio_mask=adaptation_mask, momentum=o.momentum, nesterov=False)
  if o.optimizer == 'momentum':
    return optax.sgd(lr, momentum=o.momentum, nesterov=True)
  if o.optimizer == 'adam':
    return optax.adam(lr)
  raise ValueError(f'config.optim.optimizer={o.optimizer!r}; allowed: {OPTIMIZERS}.')
