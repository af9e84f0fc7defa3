"""Config checks that run before any data loading or compilation.

Each failure names the key, the value and what is allowed, so a bad override costs seconds, not a
compiled pod job. Checks that need the devices (batch divisibility) take the device count.
"""

import ml_collections

from simclr_jax import contrastive_losses
from simclr_jax import optim
from simclr_jax.models import heads
from simclr_jax.models import resnet
from simclr_jax.data import augment
from simclr_jax.data import extra_augment


class ConfigError(ValueError):
  """A config value that cannot work; the message says which key and what is allowed."""


def _check(ok: bool, key: str, value, allowed: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}={value!r} is invalid; allowed: {allowed}.')


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError on the first invalid field."""
  m, o, t, d, a, l, e = (config.model, config.optim, config.train, config.data, config.aug,
                         config.loss, config.eval)
  _check(m.resnet_depth in resnet.BLOCKS_PER_GROUP, 'model.resnet_depth', m.resnet_depth,
         str(sorted(resnet.BLOCKS_PER_GROUP)))
  _check(m.width_multiplier > 0 and int(64 * m.width_multiplier) >= 1, 'model.width_multiplier',
         m.width_multiplier, 'a positive number with 64 * width >= 1 (paper: 1, 2, 3, 4)')
  _check(0 <= m.sk_ratio < 1, 'model.sk_ratio', m.sk_ratio, '0 (off) or in (0, 1); paper 0.0625')
  _check(m.proj_head_mode in heads.PROJ_HEAD_MODES, 'model.proj_head_mode', m.proj_head_mode,
         str(heads.PROJ_HEAD_MODES))
  _check(m.num_proj_layers >= 1, 'model.num_proj_layers', m.num_proj_layers, 'an integer >= 1')
  _check(m.proj_out_dim >= 1, 'model.proj_out_dim', m.proj_out_dim, 'an integer >= 1')
  num_hiddens = {'none': 1, 'linear': 2, 'nonlinear': m.num_proj_layers + 1}[m.proj_head_mode]
  _check(-num_hiddens <= m.ft_proj_selector < num_hiddens, 'model.ft_proj_selector',
         m.ft_proj_selector, f'an index into the {num_hiddens} head outputs '
         f'({-num_hiddens}..{num_hiddens - 1}; 0 = encoder output)')
  _check(m.dtype in ('float32', 'bfloat16'), 'model.dtype', m.dtype, "'float32' or 'bfloat16'")
  _check(m.get('conv_impl', 'auto') in ('auto', 'xla', 'matmul_grad'), 'model.conv_impl',
         m.get('conv_impl'), "'auto', 'xla' or 'matmul_grad'")
  _check(m.get('remat', False) in (True, False), 'model.remat', m.get('remat'), 'True or False')
  _check(0 <= m.batch_norm_decay < 1, 'model.batch_norm_decay', m.batch_norm_decay, '[0, 1)')
  _check(l.temperature > 0, 'loss.temperature', l.temperature, 'a positive number (paper 0.1-0.5)')
  _check(l.get('type', 'nt_xent') in contrastive_losses.LOSS_TYPES, 'loss.type', l.get('type'),
         str(contrastive_losses.LOSS_TYPES))
  _check(l.get('margin', 0.4) >= 0, 'loss.margin', l.get('margin'),
         'a number >= 0 (paper appendix B.10 tunes 0, 0.4, 0.8, 1.6)')
  _check(l.get('semi_hard', False) in (True, False), 'loss.semi_hard', l.get('semi_hard'),
         'True or False')
  _check(not (l.get('semi_hard', False) and l.get('type', 'nt_xent') == 'nt_xent'),
         'loss.semi_hard', l.get('semi_hard'),
         "False with loss.type='nt_xent' (semi-hard mining applies to nt_logistic/margin_triplet "
         'only)')
  _check(o.optimizer in optim.OPTIMIZERS, 'optim.optimizer', o.optimizer, str(optim.OPTIMIZERS))
  _check(o.learning_rate_scaling in optim.LR_SCALINGS, 'optim.learning_rate_scaling',
         o.learning_rate_scaling, str(optim.LR_SCALINGS))
  _check(o.learning_rate >= 0, 'optim.learning_rate', o.learning_rate, 'a number >= 0')
  _check(o.warmup_epochs >= 0, 'optim.warmup_epochs', o.warmup_epochs, 'a number >= 0')
  _check(o.weight_decay >= 0, 'optim.weight_decay', o.weight_decay, 'a number >= 0')
  _check(t.epochs > 0 or t.steps > 0, 'train.epochs', t.epochs,
         'a positive number of epochs, or train.steps > 0')
  _check(t.steps >= 0, 'train.steps', t.steps, '0 (use epochs) or a positive step count')
  _check(t.checkpoint_every_steps > 0, 'train.checkpoint_every_steps', t.checkpoint_every_steps,
         'a positive number of steps')
  _check(t.get('profile_steps', 0) >= 0, 'train.profile_steps', t.get('profile_steps'),
         '0 (off) or the number of steps to trace')
  _check(t.keep_checkpoints >= 1, 'train.keep_checkpoints', t.keep_checkpoints, 'an integer >= 1')
  _check(t.eval_every_epochs >= 0, 'train.eval_every_epochs', t.eval_every_epochs,
         'a number of epochs >= 0 (0 = evaluate only at the end)')
  _check(e.knn_k >= 1, 'eval.knn_k', e.knn_k, 'an integer >= 1 (Wu et al. 2018: 200)')
  _check(e.knn_temperature > 0, 'eval.knn_temperature', e.knn_temperature,
         'a positive number (Wu et al. 2018: 0.1)')
  _check(e.knn_chunk_size >= 1, 'eval.knn_chunk_size', e.knn_chunk_size, 'an integer >= 1')
  _check(e.knn_bank_size >= 0, 'eval.knn_bank_size', e.knn_bank_size,
         'an integer >= 0 (0 = the whole probe split)')
  _check(e.probe_steps >= 1, 'eval.probe_steps', e.probe_steps, 'an integer >= 1')
  _check(e.probe_batch_size >= 1, 'eval.probe_batch_size', e.probe_batch_size, 'an integer >= 1')
  _check(d.probe_train_split is None or (isinstance(d.probe_train_split, str)
                                         and d.probe_train_split),
         'data.probe_train_split', d.probe_train_split,
         'None (= data.train_split) or the name of a labelled split')
  _check(e.embedding_plot_points >= 0, 'eval.embedding_plot_points', e.embedding_plot_points,
         'an integer >= 0 (0 = no plot)')
  if 'distill' in config:
    s = config.distill
    _check(s.temperature > 0, 'distill.temperature', s.temperature,
           'a positive number (paper: 0.1 self-distillation, 1.0 big-to-small)')
    _check(s.alpha >= 0, 'distill.alpha', s.alpha, 'a number >= 0 (0 = distillation loss only)')
    _check(s.tau_squared in (True, False), 'distill.tau_squared', s.tau_squared, 'True or False')
  _check(0 <= d.get('max_corrupt_fraction', 0.0) <= 1, 'data.max_corrupt_fraction',
         d.get('max_corrupt_fraction'), '[0, 1] (0 = stop at the first undecodable record)')
  _check(d.image_size >= 8, 'data.image_size', d.image_size, 'an integer >= 8 (paper 224; CIFAR 32)')
  _check(0 < a.crop_area_min <= 1, 'aug.crop_area_min', a.crop_area_min, '(0, 1]; paper 0.08')
  _check(0 <= a.color_jitter_strength <= 1.25, 'aug.color_jitter_strength',
         a.color_jitter_strength, '[0, 1.25] (saturation factor 1 - 0.8 s must stay >= 0)')
  _check(a.impl in augment.IMPLS, 'aug.impl', a.impl, str(augment.IMPLS))
  _check(isinstance(a.on_device, bool), 'aug.on_device', a.on_device, 'True or False')
  for key in extra_augment.NAMES + ('asymmetric',):
    _check(isinstance(a.get(key, False), bool), f'aug.{key}', a.get(key), 'True or False')
  for key in extra_augment.NAMES:
    _check(key in extra_augment.ON_DEVICE or not (a.on_device and a.get(key, False)), f'aug.{key}',
           a.get(key), 'False while aug.on_device=True (it runs after the colour ops, which are '
           'then on device; only aug.rotate, a host op, combines with on_device)')
  for key, value in (('train.batch_size', t.batch_size), ('eval.batch_size', e.batch_size)):
    _check(value > 0 and value % num_devices == 0 and value % process_count == 0, key, value,
           f'a positive multiple of the {num_devices} devices and {process_count} process(es), '
           f'e.g. {[k * num_devices for k in (1, 2, 4, 8)]}')
