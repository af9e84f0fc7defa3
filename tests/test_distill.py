"""SimCLRv2's third stage (simclr_jax/distill.py): the loss, the frozen teacher, the chain
pretrain -> fine-tune on 10% of labels -> distil on every training image, and 2 real processes
against 1.

References: a NumPy transcription of the paper's loss and the identity CE = KL + H(teacher); the
teacher's variables (bitwise) and its inference-mode logits; the same job run by 1 process x 8
devices (in this process) and by 2 processes x 4 devices (simclr_jax.main).
Time: everything trains a few steps of configs/test.py's tiny ResNet; one module-scoped chain
serves every test that needs checkpoints.
"""

import functools
import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from simclr_jax import distill
from simclr_jax import linear_eval
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import train
from simclr_jax import validation
from simclr_jax.models import classifier
import mp_distill_step  # pylint: disable=g-bad-import-order
import multiprocess  # pylint: disable=g-bad-import-order

# The distillation job of the chain, as --config overrides of configs/test.py (the CLI run of
# the 2-process test passes the same ones).
DISTILL = {'mode': 'distill', 'train.steps': 4, 'train.checkpoint_every_steps': 4,
           'train.eval_every_epochs': 0.0, 'optim.optimizer': 'momentum',
           'optim.learning_rate': 0.1, 'optim.warmup_epochs': 0.0, 'optim.weight_decay': 0.0,
           'distill.temperature': 0.5,
           'data.probe_train_split': 'test'}  # kNN bank: 1,000 digits, not the 4,000 (time).


def _np_loss(s, t, tau):
  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p_t, p_s = softmax(t / tau), softmax(s / tau)
  return float(np.mean(-np.sum(p_t * np.log(p_s), -1)))


@pytest.mark.parametrize('tau', [0.1, 1.0, 2.0])
def test_loss_matches_numpy_and_kl_plus_teacher_entropy(tau):
  rng = np.random.RandomState(0)
  s, t = rng.randn(16, 10).astype(np.float64) * 3, rng.randn(16, 10).astype(np.float64) * 3
  got = float(losses.distillation_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                       tau))
  assert got == pytest.approx(_np_loss(s, t, tau), rel=1e-5)
  p_t = jax.nn.softmax(t / tau)
  log_s, log_t = jax.nn.log_softmax(s / tau), jax.nn.log_softmax(t / tau)
  kl = np.mean(np.sum(p_t * (log_t - log_s), -1))
  entropy = np.mean(-np.sum(p_t * log_t, -1))
  assert got == pytest.approx(float(kl + entropy), rel=1e-5)
  assert float(losses.distillation_loss(s, t, tau, tau_squared=True)) == pytest.approx(
      got * tau ** 2, rel=1e-6)
  # Its minimum over the student is at the teacher's logits (KL = 0): the loss is H(teacher).
  assert float(losses.distillation_loss(t, t, tau)) == pytest.approx(float(entropy), rel=1e-5)


def _config(overrides, **more):
  config = test_config.get_config()
  config.train.log_every_seconds = 0.0
  config.eval.baselines = False
  config.eval.embedding_plot_points = 0
  for key, value in {**overrides, **more}.items():
    *path, leaf = key.split('.')
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
  """Pretrain 4 steps -> fine-tune (group 4 and the head) on 10% of the labels 6 steps -> distil
  4 steps on all 4,000 training digits (student initialised from the pretraining run), in this
  process (8 devices)."""
  root = tmp_path_factory.mktemp('chain')
  pre, ft, dist = (str(root / n) for n in ('pre', 'ft', 'distill'))
  train.train_and_evaluate(_config({'train.steps': 4, 'train.checkpoint_every_steps': 4,
                                    'train.eval_every_epochs': 0.0, 'eval.probe_steps': 2,
                                    'data.probe_train_split': 'test'}), pre)
  ft_results = linear_eval.run(_config(
      {**DISTILL, 'mode': 'finetune', 'data.label_fraction': 0.1, 'train.steps': 6,
       'train.checkpoint_every_steps': 6, 'init_checkpoint': pre,
       'fine_tune_after_block': 3}), ft)  # Group 4 and the head: a smaller step to compile.
  results = distill.run(_config(DISTILL, **{'distill.teacher_checkpoint': ft,
                                            'init_checkpoint': pre}), dist)
  return {'root': root, 'pre': pre, 'ft': ft, 'distill': dist, 'ft_results': ft_results,
          'results': results}


def test_chain_writes_results_tensorboard_and_scores_the_teacher_as_fine_tuning_did(chain):
  r = chain['results']
  assert json.loads(open(os.path.join(chain['distill'], 'results.json')).read())['top1'] == \
      r['top1']
  assert r['mode'] == 'distill' and r['steps'] == 4 and r['num_train'] == 4000
  assert r['num_eval'] == 1000 and 0 <= r['top1'] <= 1 and 0 <= r['knn_top1'] <= 1
  # The teacher's eval-split score is the fine-tuning job's own (same logits, same split).
  assert r['teacher_top1'] == pytest.approx(chain['ft_results']['top1'], abs=1e-3)
  assert r['init_checkpoint'] == chain['pre'] and r['teacher_step'] == 6
  assert glob.glob(os.path.join(chain['distill'], 'events.out.tfevents.*'))
  assert np.isfinite(r['final_train_metrics']['distill_loss'])
  # A distilled workdir is itself a teacher (iterated self-training) and describes its student.
  config = json.loads(open(os.path.join(chain['distill'], 'config.json')).read())
  assert config['mode'] == 'distill' and config['distill']['teacher_checkpoint'] == chain['ft']


class _Tiny(nn.Module):
  """BatchNorm + Dense: enough to tell inference-mode BN from batch statistics."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x.reshape(x.shape[0], -1))
    return {'logits': nn.Dense(10)(x), 'head_input': x}


def test_teacher_frozen_inference_mode_and_no_gradient():
  """make_distill_step with tiny modules: the teacher's logits are its inference-mode ones (its
  BN moving averages, not the batch's statistics), and the step's loss has zero gradient with
  respect to every teacher variable (stop_gradient); after donated steps its params and BN
  statistics are bitwise those it started with."""
  config = _config(DISTILL)
  tiny = _Tiny()
  x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 4, 4, 3)), jnp.uint8)
  images = steps.to_float_images(x)
  student = tiny.init(jax.random.key(1), images)
  teacher = tiny.init(jax.random.key(2), images)
  teacher = {'params': teacher['params'], 'batch_stats': jax.tree.map(
      lambda v: v + 0.5, teacher['batch_stats'])}  # Moving averages far from the batch's.
  tx = linear_eval.create_optimizer(config, 4000, student['params'])
  state = steps.TrainState.create(apply_fn=tiny.apply, params=student['params'],
                                  batch_stats=student['batch_stats'], tx=tx)
  step = distill.make_distill_step(
      config, student_apply=tiny.apply, teacher_apply=tiny.apply, teacher_output='logits',
      labels=classifier.trainable_labels(student['params'], config),
      lr_fn=optim.create_learning_rate_fn(config, 4000))
  batch = {'image': x, 'label': jnp.zeros((8,), jnp.int32)}
  s_logits = tiny.apply(student, images, train=True, mutable=['batch_stats'])[0]['logits']
  frozen = tiny.apply(teacher, images)['logits']
  batch_mode = tiny.apply(teacher, images, train=True, mutable=['batch_stats'])[0]['logits']
  got = float(jax.jit(step)(state, batch, teacher)[1]['distill_loss'])
  assert got == pytest.approx(float(losses.distillation_loss(s_logits, frozen, 0.5)), rel=1e-6)
  assert got != pytest.approx(float(losses.distillation_loss(s_logits, batch_mode, 0.5)),
                              rel=1e-3)
  grads = jax.jit(jax.grad(lambda tv: step(state, batch, tv)[1]['total_loss']))(teacher)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
  before = jax.tree.map(np.array, teacher)
  jitted = jax.jit(step, donate_argnums=(0,))
  for _ in range(3):
    state, metrics = jitted(state, batch, teacher)
  assert float(metrics['distill_loss']) < got  # The student moves...
  assert jax.tree.all(jax.tree.map(np.array_equal, before, teacher))  # ...the teacher, bitwise not.


def test_two_processes_equal_one(chain, tmp_path):
  """Two distillation steps on one global batch of real digits, teacher and student restored
  from the chain's runs as distill.run restores them: 2 real processes x 4 devices
  (tests/helpers/mp_distill_step.py) give the losses, params and BN statistics of 1 process x 8
  devices, and the teacher's variables come back bitwise (state donated) in both. Below the CLI
  (its evaluations would double this test's time); the loop itself is test_multiprocess's."""
  out = tmp_path / 'step.npz'
  res = multiprocess.launch(
      lambda i: ['tests/helpers/mp_distill_step.py', f'--teacher={chain["ft"]}',
                 f'--init={chain["pre"]}', f'--out={out}'],
      num_processes=2, devices_per_process=4, timeout=300)
  assert all(r is not None and r.returncode == 0 for r in res), multiprocess.describe(res)
  assert 'process 1 of 2: 8 devices' in res[1].stdout
  ref = mp_distill_step.compute(sharding.make_mesh(), chain['ft'], chain['pre'])
  got = dict(np.load(out))
  assert set(got) == set(ref)
  assert bool(ref['teacher_bitwise']) and bool(got['teacher_bitwise'])
  for k in ('loss0', 'loss1'):
    assert abs(got[k] - ref[k]) <= 1e-5 * abs(ref[k]), k
  assert ref['loss1'] < ref['loss0']  # It learns from the teacher.
  for prefix in ('params', 'stats'):
    keys = [k for k in ref if k.startswith(prefix)]
    flat = lambda d, keys=keys: np.concatenate([d[k].ravel().astype(np.float64) for k in keys])
    assert np.linalg.norm(flat(got) - flat(ref)) <= 1e-5 * np.linalg.norm(flat(ref)), prefix


@pytest.mark.parametrize('key,value,match', [
    ('distill.temperature', 0.0, 'config.distill.temperature=0.0 is invalid'),
    ('distill.alpha', -1.0, 'config.distill.alpha=-1.0 is invalid'),
    ('distill.teacher_checkpoint', None, 'needs --config.distill.teacher_checkpoint'),
    ('distill.teacher_checkpoint', '/nonexistent/ft', 'config.json'),
    ('data.label_fraction', 0.1, 'config.data.label_fraction=0.1 is invalid'),
])
def test_bad_values_fail_before_compiling(tmp_path, monkeypatch, chain, key, value, match):
  config = _config(DISTILL, **{'distill.teacher_checkpoint': chain['ft'], key: value})

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled before checking the config')

  monkeypatch.setattr(jax, 'jit', no_compile)
  with pytest.raises(validation.ConfigError, match=match):
    distill.run(config, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_distill_step_compiles_on_abstract_inputs():
  """make_distill_step is pure: jit(...).lower() on ShapeDtypeStructs, as the plan does."""
  config = _config(DISTILL)
  model = classifier.build_classifier(config, 10)
  init = functools.partial(model.init, train=False)
  v = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  tx = linear_eval.create_optimizer(config, 4000, v['params'])
  state = jax.eval_shape(lambda p, s: steps.TrainState.create(
      apply_fn=model.apply, params=p, batch_stats=s, tx=tx), v['params'], v['batch_stats'])
  step = distill.make_distill_step(
      config, student_apply=model.apply, teacher_apply=model.apply, teacher_output='logits',
      labels=classifier.trainable_labels(v['params'], config),
      lr_fn=optim.create_learning_rate_fn(config, 4000))
  batch = {'image': jax.ShapeDtypeStruct((32, 16, 16, 3), jnp.uint8),
           'label': jax.ShapeDtypeStruct((32,), jnp.int32)}
  lowered = jax.jit(step).lower(state, batch, v)
  assert 'distill_loss' in lowered.out_info[1]
