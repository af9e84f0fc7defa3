"""A TensorFlow 2 SimCLR pretraining step (tf.function, float32, NHWC): the same network, loss and
optimiser as simclr_jax, run the way the official TF2 code (google-research/simclr, tf2/run.py)
runs a step: one GradientTape over a training-mode forward pass of both views concatenated along
the batch, the official NT-Xent, the probe's L2 added to the loss, gradients applied by a
per-variable classic-momentum LARS.

    python bench/tf2_reference.py --depth=18 --width=1 --image_size=32 --batch=64 [--steps=5]
        [--jit_compile]                                   # ours, written with tf.Module + tf.nn
    python bench/tf2_reference.py ... --official_dir=/tmp/simclr_official/tf2 \
        [--tf_keras_dir=/tmp/tf_keras_2.21]               # the official modules themselves

Each prints one JSON line (see `time_step`).

Our TF2 step (written from reading the official code's behaviour, not copied):
- ResNet v1: convs without bias, stride-1 convs SAME, strided convs pad (k-1)//2 before and the
  rest after then VALID; BN epsilon 1e-5, decay 0.9, unfused (tf.nn.moments +
  tf.nn.batch_normalization, as the official `fused=False` Keras layer), last BN gamma of each
  block zero; projection shortcut in the first block of every group; bottlenecks stride on the
  3x3; CIFAR stem (3x3/1, no max pool) for images <= 32 px, else 7x7/2 + 3x3/2 SAME max pool.
- Head: `proj_layers` x (Dense no bias + BN), ReLU between, last BN without centre, 128 out.
  Probe: Dense(classes) with bias on stop_gradient(h), both views classified, mean CE.
- Loss: official NT-Xent (L2-normalised, tau, self-similarity minus 1e9, mean of CE_a + CE_b) +
  probe CE + weight_decay * l2_loss(probe kernel).
- LARS: kernels (not BN, biases, probe) get g += wd * w and trust = eta * ||w|| / ||g||;
  v = 0.9 v + lr * trust * g; w -= v. Constant lr (the schedule's cost is one scalar).
- Input: uint8 views [B, 2, H, W, 3] already in memory, cast to float / 255 inside the step;
  the official code gets float images [B, H, W, 6] from tf.data instead (its pipeline is
  excluded here too) and splits them into [view 1 of all; view 2 of all].

The official code (`--official_dir`): imports tf2/run.py (for its flag definitions), model.py,
objective.py, metrics.py and lars_optimizer.py from that directory; builds `model.Model` under a
MirroredStrategy as run.py does, with its LARSOptimizer and WarmUpAndCosineDecay, and times a
tf.function that calls `strategy.run(single_step)` where single_step is run.py's: forward,
add_contrastive_loss, supervised loss, add_weight_decay, the pretrain/finetune metrics,
tape.gradient, apply_gradients (run.py loops `steps_per_loop` steps inside one tf.function; here
each call is one step, as for our other benches). It needs Keras 2: the official LARS subclasses
`tf.keras.optimizers.legacy.Optimizer`, which Keras 3 lacks. `pip install --no-deps --target
/tmp/tf_keras_2.21 tf_keras==2.21.0` (the tf_keras release matching tensorflow) and pass
`--tf_keras_dir=/tmp/tf_keras_2.21`; TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported, so
the official path runs in a process of its own (the CLI is that process). The official
`width_multiplier` flag is an integer.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Optional

from reference_common import BLOCKS_PER_GROUP, BN_DECAY, BN_EPSILON, LARGE_NUM, PROJ_OUT_DIM  # pylint: disable=g-import-not-at-top,unused-import


def _tf():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')  # CPU reference; no GPU is used even if present.
  except RuntimeError:
    pass  # Already initialised.
  return tf


def _threads(tf):
  """TF's intra-op thread count (0 means one per core)."""
  return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()


def _quantile(xs, q):
  xs = sorted(xs)
  pos = (len(xs) - 1) * q
  lo, hi = math.floor(pos), math.ceil(pos)
  return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(times, batch):
  med = statistics.median(times)
  return {'images_per_s': batch / med, 'views_per_s': 2 * batch / med, 'step_s': med,
          'step_s_min': min(times), 'step_s_max': max(times),
          'step_s_iqr': _quantile(times, 0.75) - _quantile(times, 0.25),
          'step_s_all': [round(x, 5) for x in times],
          'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ---------------------------------------------------------------------------------------------
# Our TF2 model
# ---------------------------------------------------------------------------------------------

def build_model(depth: int, width: float, image_size: int, proj_layers: int = 3,
                probe_classes: int = 10, seed: int = 0):
  """Returns (model, adapted) where model(images [N,H,W,3] float, training) -> (z, h, logits)."""
  tf = _tf()
  rng = tf.random.Generator.from_seed(seed)
  if depth not in BLOCKS_PER_GROUP:
    raise ValueError(f'depth={depth}; allowed: {sorted(BLOCKS_PER_GROUP)}')

  def kernel(shape, std):
    return tf.Variable(rng.truncated_normal(shape, stddev=std), name='kernel')

  class Conv(tf.Module):

    def __init__(self, cin, cout, k, stride):
      super().__init__()
      self.k, self.stride = k, stride
      fan_in = cin * k * k
      self.kernel = kernel([k, k, cin, cout], math.sqrt(1.0 / fan_in) / .87962566103423978)

    def __call__(self, x):
      if self.stride == 1:
        return tf.nn.conv2d(x, self.kernel, 1, 'SAME')
      beg = (self.k - 1) // 2
      end = self.k - 1 - beg
      x = tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]])
      return tf.nn.conv2d(x, self.kernel, self.stride, 'VALID')

  class BN(tf.Module):

    def __init__(self, c, center=True, init_zero=False, relu=True):
      super().__init__()
      self.relu = relu
      self.gamma = tf.Variable(tf.zeros([c]) if init_zero else tf.ones([c]), name='gamma')
      self.beta = tf.Variable(tf.zeros([c]), name='beta') if center else None
      self.moving_mean = tf.Variable(tf.zeros([c]), trainable=False, name='moving_mean')
      self.moving_var = tf.Variable(tf.ones([c]), trainable=False, name='moving_variance')

    def __call__(self, x, training):
      if training:
        mean, var = tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
        self.moving_mean.assign(BN_DECAY * self.moving_mean + (1 - BN_DECAY) * mean)
        self.moving_var.assign(BN_DECAY * self.moving_var + (1 - BN_DECAY) * var)
      else:
        mean, var = self.moving_mean, self.moving_var
      y = tf.nn.batch_normalization(x, mean, var, self.beta, self.gamma, BN_EPSILON)
      return tf.nn.relu(y) if self.relu else y

  class Block(tf.Module):

    def __init__(self, cin, filters, stride, projection, bottleneck):
      super().__init__()
      out = 4 * filters if bottleneck else filters
      self.shortcut = ([Conv(cin, out, 1, stride), BN(out, relu=False)] if projection else [])
      if bottleneck:
        self.layers = [Conv(cin, filters, 1, 1), BN(filters), Conv(filters, filters, 3, stride),
                       BN(filters), Conv(filters, out, 1, 1),
                       BN(out, init_zero=True, relu=False)]
      else:
        self.layers = [Conv(cin, filters, 3, stride), BN(filters), Conv(filters, filters, 3, 1),
                       BN(filters, init_zero=True, relu=False)]

    def __call__(self, x, training):
      s = x
      for layer in self.shortcut:
        s = layer(s, training) if isinstance(layer, BN) else layer(s)
      for layer in self.layers:
        x = layer(x, training) if isinstance(layer, BN) else layer(x)
      return tf.nn.relu(x + s)

  class Dense(tf.Module):

    def __init__(self, cin, cout, bias):
      super().__init__()
      self.kernel = tf.Variable(rng.normal([cin, cout], stddev=0.01), name='kernel')
      self.bias = tf.Variable(tf.zeros([cout]), name='bias') if bias else None

    def __call__(self, x):
      y = tf.matmul(x, self.kernel)
      return y + self.bias if self.bias is not None else y

  class Model(tf.Module):

    def __init__(self):
      super().__init__()
      self.cifar_stem = image_size <= 32
      c = int(64 * width)
      self.stem = [Conv(3, c, 3, 1) if self.cifar_stem else Conv(3, c, 7, 2), BN(c)]
      bottleneck = depth >= 50
      self.blocks = []
      cin = c
      for g, (n, base) in enumerate(zip(BLOCKS_PER_GROUP[depth], (64, 128, 256, 512))):
        f = int(base * width)
        for b in range(n):
          self.blocks.append(Block(cin, f, (1 if g == 0 else 2) if b == 0 else 1, b == 0,
                                   bottleneck))
          cin = 4 * f if bottleneck else f
      self.head = [(Dense(cin, PROJ_OUT_DIM if j == proj_layers - 1 else cin, False),
                    BN(PROJ_OUT_DIM if j == proj_layers - 1 else cin,
                       center=j != proj_layers - 1, relu=j != proj_layers - 1))
                   for j in range(proj_layers)]
      self.probe = Dense(cin, probe_classes, True) if probe_classes else None

    def __call__(self, x, training):
      x = self.stem[1](self.stem[0](x), training)
      if not self.cifar_stem:
        x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
      for block in self.blocks:
        x = block(x, training)
      h = tf.reduce_mean(x, [1, 2])
      z = h
      for dense, bn in self.head:
        z = bn(dense(z), training)
      logits = self.probe(tf.stop_gradient(h)) if self.probe is not None else None
      return z, h, logits

  model = Model()
  probe_ids = {id(v) for v in (model.probe.trainable_variables if model.probe else ())}
  adapted = [v.name == 'kernel:0' and id(v) not in probe_ids for v in model.trainable_variables]
  return model, adapted


def nt_xent(tf, z, temperature, hidden_norm=True):
  """The official loss on z = [view 1 of all N; view 2 of all N]."""
  if hidden_norm:
    z = tf.math.l2_normalize(z, -1)
  z1, z2 = tf.split(z, 2, 0)
  n = tf.shape(z1)[0]
  labels = tf.one_hot(tf.range(n), 2 * n)
  mask = tf.one_hot(tf.range(n), n) * LARGE_NUM
  aa = tf.matmul(z1, z1, transpose_b=True) / temperature - mask
  bb = tf.matmul(z2, z2, transpose_b=True) / temperature - mask
  ab = tf.matmul(z1, z2, transpose_b=True) / temperature
  ba = tf.matmul(z2, z1, transpose_b=True) / temperature
  loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([ab, aa], 1))
  loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([ba, bb], 1))
  return tf.reduce_mean(loss_a + loss_b)


def make_step(model, adapted, *, lr, weight_decay, temperature=0.5, momentum=0.9, eta=0.001,
              jit_compile=False):
  tf = _tf()
  variables = model.trainable_variables
  slots = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

  @tf.function(jit_compile=jit_compile)
  def step(views, labels):
    b = tf.shape(views)[0]
    x = tf.transpose(views, [1, 0, 2, 3, 4])  # [2, B, H, W, 3]: all view 1, then all view 2.
    x = tf.reshape(x, tf.concat([[2 * b], tf.shape(views)[2:]], 0))
    x = tf.cast(x, tf.float32) / 255.0
    with tf.GradientTape() as tape:
      z, _, logits = model(x, training=True)
      loss = nt_xent(tf, z, temperature)
      if logits is not None:
        l2 = tf.concat([labels, labels], 0)
        loss += tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(l2, logits))
        loss += weight_decay * tf.nn.l2_loss(model.probe.kernel)
    grads = tape.gradient(loss, variables)
    for v, g, s, adapt in zip(variables, grads, slots, adapted):
      if adapt:
        g = g + weight_decay * v
        w_norm, g_norm = tf.norm(v), tf.norm(g)
        trust = tf.where(w_norm > 0, tf.where(g_norm > 0, eta * w_norm / g_norm, 1.0), 1.0)
        new_s = momentum * s + lr * trust * g
      else:
        new_s = momentum * s + lr * g
      s.assign(new_s)
      v.assign_sub(new_s)
    return loss

  return step


def time_step(depth: int, width: float, image_size: int, batch: int, dtype: str = 'float32',
              steps: int = 5, channels_last: bool = False, compile: bool = False,
              proj_layers: int = 3, device: str = 'cpu', *, probe_classes: int = 10,
              temperature: float = 0.5, learning_rate: float = 0.3, weight_decay: float = 1e-6,
              warmup_steps: int = 1, jit_compile: Optional[bool] = None, seed: int = 0) -> dict:
  """Our TF2 step: same signature and result keys as pytorch_reference.time_step.

  float32 and NHWC only (`channels_last` is what TF does anyway; bfloat16 raises). `compile` or
  `jit_compile` turn on XLA (tf.function(jit_compile=True)); the official GPU path does not use it.
  `device` must be 'cpu' (accelerators are hidden from TF here).
  """
  if dtype != 'float32':
    raise ValueError('tf2_reference runs float32 only')
  if device != 'cpu':
    raise ValueError('tf2_reference runs on the CPU only')
  jit = bool(compile if jit_compile is None else jit_compile)
  tf = _tf()
  import numpy as np  # pylint: disable=g-import-not-at-top
  model, adapted = build_model(depth, width, image_size, proj_layers, probe_classes, seed)
  step = make_step(model, adapted, lr=learning_rate * batch / 256, weight_decay=weight_decay,
                   temperature=temperature, jit_compile=jit)
  rng = np.random.RandomState(seed)
  views = tf.constant(rng.randint(0, 256, (batch, 2, image_size, image_size, 3)).astype(np.uint8))
  labels = tf.constant(rng.randint(0, max(probe_classes, 1), (batch,)).astype(np.int32))
  t = time.perf_counter()
  loss = step(views, labels).numpy()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(max(warmup_steps, 0)):
    loss = step(views, labels).numpy()
  warmup_s = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    loss = step(views, labels).numpy()
    times.append(time.perf_counter() - t)
  out = {'impl': 'tf2', 'depth': depth, 'width': width, 'image_size': image_size,
         'batch': batch, 'views': 2 * batch, 'dtype': dtype, 'channels_last': True,
         'compile': jit, 'proj_layers': proj_layers, 'probe_classes': probe_classes,
         'device': device, 'steps': steps}
  out.update(_summary(times, batch))
  out.update(compile_s=compile_s, warmup_s=warmup_s, loss=float(loss),
             params=int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
             peak_memory_bytes=None, threads=_threads(tf), tensorflow=tf.__version__)
  return out


# ---------------------------------------------------------------------------------------------
# The official code
# ---------------------------------------------------------------------------------------------

def time_official_step(official_dir: str, depth: int, width: int, image_size: int, batch: int,
                       steps: int = 5, proj_layers: int = 3, *, tf_keras_dir: Optional[str] = None,
                       probe_classes: int = 10, temperature: float = 0.5,
                       learning_rate: float = 0.3, weight_decay: float = 1e-6,
                       warmup_steps: int = 1, seed: int = 0) -> dict:
  """Times google-research/simclr's own tf2 step (see the module docstring). Call it in a process
  that has not imported TensorFlow yet (the CLI does)."""
  if 'tensorflow' in sys.modules and os.environ.get('TF_USE_LEGACY_KERAS') != '1':
    raise RuntimeError('the official code needs TF_USE_LEGACY_KERAS=1 before TensorFlow is '
                       'imported: run the CLI with --official_dir in a fresh process')
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  if tf_keras_dir:
    sys.path.insert(0, os.path.abspath(tf_keras_dir))
  official_dir = os.path.abspath(official_dir)
  for name in ('run.py', 'model.py', 'resnet.py', 'objective.py', 'lars_optimizer.py'):
    if not os.path.exists(os.path.join(official_dir, name)):
      raise FileNotFoundError(f'{official_dir} has no {name}: pass the tf2/ directory')
  tf = _tf()
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    tf.keras.optimizers.legacy.Optimizer  # pylint: disable=pointless-statement
  except AttributeError as e:
    raise RuntimeError('tf.keras is Keras 3: install tf_keras (see the module docstring) and '
                       'pass --tf_keras_dir') from e
  sys.path.insert(0, official_dir)
  from absl import flags  # pylint: disable=g-import-not-at-top
  import run  # pylint: disable=g-import-not-at-top,import-outside-toplevel  # Defines the flags.
  import metrics as official_metrics  # pylint: disable=g-import-not-at-top
  import model as model_lib  # pylint: disable=g-import-not-at-top
  import objective as obj_lib  # pylint: disable=g-import-not-at-top
  del run
  if int(width) != width:
    raise ValueError('the official width_multiplier flag is an integer')
  num_examples = 50_000
  flags.FLAGS([
      'official', f'--resnet_depth={depth}', f'--width_multiplier={int(width)}',
      f'--image_size={image_size}', f'--train_batch_size={batch}',
      f'--num_proj_layers={proj_layers}', '--proj_head_mode=nonlinear', '--sk_ratio=0',
      '--train_mode=pretrain', f'--lineareval_while_pretraining={bool(probe_classes)}',
      '--use_blur=False', '--optimizer=lars', f'--learning_rate={learning_rate}',
      f'--weight_decay={weight_decay}', f'--temperature={temperature}', '--warmup_epochs=0',
      '--train_epochs=100', '--global_bn=True', '--use_tpu=False'])
  tf.random.set_seed(seed)
  strategy = tf.distribute.MirroredStrategy()  # As run.py off TPU (one replica on a CPU).
  with strategy.scope():
    model = model_lib.Model(max(probe_classes, 1))
    lr = model_lib.WarmUpAndCosineDecay(learning_rate, num_examples)
    optimizer = model_lib.build_optimizer(lr)
    mean = tf.keras.metrics.Mean
    m = {k: mean(f'train/{k}') for k in ('contrast_loss', 'contrast_acc', 'contrast_entropy',
                                          'supervised_loss', 'supervised_acc', 'weight_decay',
                                          'total_loss')}

  def single_step(features, labels):
    with tf.GradientTape() as tape:
      proj, sup = model(features, training=True)
      con_loss, logits_con, labels_con = obj_lib.add_contrastive_loss(
          proj, hidden_norm=True, temperature=temperature, strategy=strategy)
      loss = con_loss
      official_metrics.update_pretrain_metrics_train(
          m['contrast_loss'], m['contrast_acc'], m['contrast_entropy'], con_loss, logits_con,
          labels_con)
      if sup is not None:
        l = tf.concat([labels, labels], 0)
        sup_loss = obj_lib.add_supervised_loss(labels=l, logits=sup)
        loss += sup_loss
        official_metrics.update_finetune_metrics_train(m['supervised_loss'], m['supervised_acc'],
                                                       sup_loss, l, sup)
      wd = model_lib.add_weight_decay(model, adjust_per_optimizer=True)
      m['weight_decay'].update_state(wd)
      loss += wd
      m['total_loss'].update_state(loss)
      loss = loss / strategy.num_replicas_in_sync
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function
  def step(features, labels):
    return strategy.run(single_step, (features, labels))

  rng = np.random.RandomState(seed)
  # The official pipeline's output: both views stacked on channels, float32 in [0, 1], one-hot.
  features = tf.constant(rng.rand(batch, image_size, image_size, 6).astype(np.float32))
  labels = tf.one_hot(rng.randint(0, max(probe_classes, 1), (batch,)), max(probe_classes, 1))

  def run_one():
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, step(features, labels), axis=None))

  t = time.perf_counter()
  loss = run_one()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(max(warmup_steps, 0)):
    loss = run_one()
  warmup_s = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    loss = run_one()
    times.append(time.perf_counter() - t)
  out = {'impl': 'tf2_official', 'depth': depth, 'width': width, 'image_size': image_size,
         'batch': batch, 'views': 2 * batch, 'dtype': 'float32', 'channels_last': True,
         'compile': False, 'proj_layers': proj_layers, 'probe_classes': probe_classes,
         'device': 'cpu', 'steps': steps}
  out.update(_summary(times, batch))
  out.update(compile_s=compile_s, warmup_s=warmup_s, loss=loss,
             params=int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
             peak_memory_bytes=None, threads=_threads(tf), tensorflow=tf.__version__,
             keras=tf.keras.__name__ if hasattr(tf.keras, '__name__') else str(tf.keras),
             replicas=strategy.num_replicas_in_sync)
  return out


def main(argv: Optional[list[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--depth', type=int, default=18)
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--image_size', type=int, default=32)
  p.add_argument('--batch', type=int, default=64, help='images (pairs); views = 2 * batch')
  p.add_argument('--dtype', default='float32', choices=['float32'])
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup_steps', type=int, default=1)
  p.add_argument('--proj_layers', type=int, default=3)
  p.add_argument('--probe_classes', type=int, default=10, help='0: no online probe')
  p.add_argument('--jit_compile', action='store_true', help='ours only: tf.function with XLA')
  p.add_argument('--official_dir', default=None, help="time the official tf2/ code instead")
  p.add_argument('--tf_keras_dir', default=None, help='a --target install of tf_keras')
  p.add_argument('--threads', type=int, default=0,
                 help='TF intra-op threads if > 0 (default: all cores)')
  a = p.parse_args(argv)
  if a.official_dir:
    os.environ['TF_USE_LEGACY_KERAS'] = '1'
    if a.tf_keras_dir:
      sys.path.insert(0, os.path.abspath(a.tf_keras_dir))
  if a.threads > 0:
    tf = _tf()
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
  if a.official_dir:
    r = time_official_step(a.official_dir, a.depth, a.width, a.image_size, a.batch, a.steps,
                           a.proj_layers, tf_keras_dir=a.tf_keras_dir,
                           probe_classes=a.probe_classes, warmup_steps=a.warmup_steps)
  else:
    r = time_step(a.depth, a.width, a.image_size, a.batch, a.dtype, a.steps,
                  proj_layers=a.proj_layers, probe_classes=a.probe_classes,
                  warmup_steps=a.warmup_steps, jit_compile=a.jit_compile)
  print(json.dumps(r), flush=True)


if __name__ == '__main__':
  sys.exit(main())
