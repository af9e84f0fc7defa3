"""The frozen teacher of a distillation job (distill.py): which checkpoint, its module, its
variables. Any simclr_jax workdir whose checkpoint holds a supervised head qualifies."""

import dataclasses
from typing import Any

from etils import epath
import ml_collections

from simclr_jax import cluster
from simclr_jax import models
from simclr_jax import sharding
from simclr_jax import validation
from simclr_jax.checkpoints import checkpointing
from simclr_jax.checkpoints import encoder as encoders
from simclr_jax.cpu import ops
from simclr_jax.models import classifier


@dataclasses.dataclass
class Teacher:
  """A frozen classifier: its run's workdir, step and config, the module and its output name."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: Any = None
  output: str = 'logits'  # 'logits' (Classifier) or 'sup_logits' (SimCLR with its probe).
  variables: Any = None

  @property
  def num_classes(self) -> int:
    return encoders.num_classes(self.variables['params'])


def locate_teacher(config: ml_collections.ConfigDict) -> Teacher:
  """The checkpoint distill.teacher_checkpoint names (a workdir: its newest checkpoint; or
  workdir/checkpoints/<step>), with its run's config; reads nothing else. Process 0 decides."""
  src = config.distill.teacher_checkpoint

  def find():
    workdir, step = encoders.split_path(src)
    try:
      cfg = checkpointing.read_config(workdir)
    except FileNotFoundError as e:
      raise validation.ConfigError(f'config.distill.teacher_checkpoint={src!r}: {e}') from e
    step = encoders.latest_step(workdir) if step is None else step
    if step is None or not (epath.Path(workdir) / checkpointing.CHECKPOINT_DIR / str(step)
                            ).exists():
      raise validation.ConfigError(f'config.distill.teacher_checkpoint={src!r} has no checkpoint'
                                   + ('' if step is None else f' of step {step}') + '.')
    return {'workdir': workdir, 'step': int(step), 'config': cfg.to_dict()}

  found = cluster.process_0_does(find, f'locating config.distill.teacher_checkpoint={src!r}')
  return Teacher(found['workdir'], found['step'], ml_collections.ConfigDict(found['config']))


def load_teacher(teacher: Teacher, config: ml_collections.ConfigDict, mesh) -> Teacher:
  """`teacher` with its module and variables (replicated on `mesh`); ConfigError if it has no
  supervised head. A linear-eval run on precomputed features saved only its head: the encoder
  then comes from that run's own init_checkpoint."""
  cfg, mode = teacher.config, teacher.config.get('mode', 'pretrain')
  variables = encoders.restore_variables(teacher.workdir, teacher.step,
                                         sharding.replicated(mesh))
  if 'head_supervised' not in variables['params']:
    raise validation.ConfigError(
        f'config.distill.teacher_checkpoint={teacher.workdir!r} ({mode} run, step '
        f'{teacher.step}) has no supervised head: fine-tune it first (config.mode=finetune), '
        'or pretrain with train.lineareval_while_pretraining.')
  num_classes = encoders.num_classes(variables['params'])
  conv = ops.model_ops(config)  # This machine's convolutions, the teacher's architecture.
  if mode == 'pretrain':
    d = cfg.to_dict()
    d.setdefault('train', {})['lineareval_while_pretraining'] = True
    model = models.build_model(ml_collections.ConfigDict(d), num_classes, conv)
    output = 'sup_logits'
  else:
    model, output = classifier.build_classifier(cfg, num_classes, conv), 'logits'
    if 'encoder' not in variables['params']:  # linear_eval.precompute_features: head only.
      pre = encoders.locate(cfg.init_checkpoint)
      full = classifier.init_variables(
          model, encoders.restore_variables(pre.workdir, pre.step, sharding.replicated(mesh)),
          cfg, mesh)
      full['params']['head_supervised'] = variables['params']['head_supervised']
      variables = full
  return dataclasses.replace(teacher, model=model, output=output, variables=variables)
