"""Reading a published SimCLR checkpoint (google-research/simclr, TF1 or TF2) with TensorFlow's
checkpoint reader: which file a path names, which variables are model weights, and each
official variable name's key in the file (see checkpoints/convert.py for what is done with
them).
"""

import dataclasses
import functools
import re
from typing import Callable, Optional

import numpy as np

TF2_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
OBJECT_GRAPH = '_CHECKPOINTABLE_OBJECT_GRAPH'
TF1_EMA_PREFIX = 'ema_model/'
# Not model weights: optimiser slots and state, counters. Everything else must map.
TF2_SKIP = re.compile(r'(^|/)\.OPTIMIZER_SLOT/|^(optimizer|save_counter|global_step)/'
                      rf'|^{OBJECT_GRAPH}$')
TF1_SKIP = re.compile(r'^global_step$|/(Momentum|Adam|Adam_1|ExponentialMovingAverage)$'
                      r'|^beta[12]_power$')


class ConversionError(ValueError):
  """The checkpoint does not map exactly onto a simclr_jax model; lists what did not match."""


@dataclasses.dataclass
class Source:
  """An opened official checkpoint.

  resolve(official name) -> checkpoint key or None; keys: every variable key that must be
  mapped; skipped: keys deliberately not read; get(key) -> numpy array.
  """
  prefix: str
  format: str  # 'tf2' | 'tf1'
  resolve: Callable[[str], Optional[str]]
  keys: set
  skipped: list
  shapes: dict
  get: Callable[[str], np.ndarray]
  step: int




def checkpoint_prefix(path: str) -> str:
  """The checkpoint prefix PATH names: a prefix, a file of one, a directory holding a
  `checkpoint` index (its latest), a SavedModel directory, or a directory with one checkpoint."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  p = path.rstrip('/')
  for ext in ('.index', '.meta'):
    if p.endswith(ext):
      return p[:-len(ext)]
  p = re.sub(r'\.data-\d+-of-\d+$', '', p)
  if tf.io.gfile.exists(p + '.index'):
    return p
  if tf.io.gfile.isdir(p):
    if tf.io.gfile.exists(f'{p}/variables/variables.index'):  # A SavedModel.
      return f'{p}/variables/variables'
    latest = tf.train.latest_checkpoint(p)
    if latest:
      return latest
    found = sorted(tf.io.gfile.glob(f'{p}/*.index'))
    if len(found) == 1:
      return found[0][:-len('.index')]
    if found:
      raise ConversionError(f'{path!r} holds {len(found)} checkpoints and no `checkpoint` file '
                            f'naming the latest; pass one prefix: {[f[:-6] for f in found]}.')
  raise ConversionError(f'{path!r} is not a TensorFlow checkpoint (no {p}.index), a directory of '
                        'checkpoints, or a SavedModel directory.')


def _step_from_name(prefix: str) -> int:
  m = re.search(r'(?:ckpt|model\.ckpt)-(\d+)$', prefix) or re.search(
      r'/(\d+)/variables/variables$', prefix)
  return int(m.group(1)) if m else 0


def _tf2_model_resolver(reader, keys: set) -> Callable[[str], Optional[str]]:
  """resolve(object path under the model) through the object graph; the model is the root or
  the root's child that has a `resnet_model` child."""
  # pylint: disable-next=g-import-not-at-top
  from tensorflow.core.protobuf import trackable_object_graph_pb2
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH))
  children = [{c.local_name: c.node_id for c in node.children} for node in graph.nodes]
  model = 0
  if 'resnet_model' not in children[0]:
    with_resnet = [i for i in children[0].values() if 'resnet_model' in children[i]]
    model = with_resnet[0] if with_resnet else None

  @functools.lru_cache(maxsize=None)
  def node(path: str) -> Optional[int]:
    if not path:
      return model
    head, _, last = path.rpartition('/')
    parent = node(head)
    return None if parent is None else children[parent].get(last)

  def resolve(name: str) -> Optional[str]:
    n = node(name)
    if n is None:
      return None
    for attr in graph.nodes[n].attributes:
      if attr.name == 'VARIABLE_VALUE' and attr.checkpoint_key in keys:
        return attr.checkpoint_key
    return None

  return resolve


def open_checkpoint(path: str, ema: bool = False, skip: Optional[str] = None) -> Source:
  """Opens PATH (see checkpoint_prefix) and classifies its keys. `skip`: a regular expression of
  further keys to leave out on purpose (counted in the summary, never silently)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  prefix = checkpoint_prefix(path)
  reader = tf.train.load_checkpoint(prefix)
  shapes = {k: tuple(s) for k, s in reader.get_variable_to_shape_map().items()}
  extra = re.compile(skip) if skip else None
  skipped, keys = [], set()
  tf2 = OBJECT_GRAPH in shapes or any(k.endswith(TF2_SUFFIX) for k in shapes)
  if ema and (tf2 or not any(k.startswith(TF1_EMA_PREFIX) for k in shapes)):
    raise ConversionError(f'{prefix}: ema=True, but it has no EMA copy ({TF1_EMA_PREFIX}...); '
                          'only the TF1 SimCLRv2 checkpoints do.')
  pattern = TF2_SKIP if tf2 else TF1_SKIP
  for k in shapes:
    drop = bool(pattern.search(k) or (extra and extra.search(k)))
    if not tf2 and k.startswith(TF1_EMA_PREFIX):
      drop = drop or not ema  # EMA copies, unless chosen.
    elif not tf2 and ema and f'{TF1_EMA_PREFIX}{k}' in shapes:
      drop = True  # With ema, the plain copy of a variable that has an EMA one.
    if drop:
      skipped.append(k)
    else:
      keys.add(k)
  step = _step_from_name(prefix)
  for k in ('global_step' + (TF2_SUFFIX if tf2 else ''), 'optimizer/iter' + TF2_SUFFIX):
    if k in shapes and not shapes[k]:
      step = int(reader.get_tensor(k))
      break
  if tf2:
    if OBJECT_GRAPH in shapes:
      resolve = _tf2_model_resolver(reader, keys)
    else:  # Keys written without an object graph: take them as `model/<path>`.
      resolve = lambda n: f'model/{n}{TF2_SUFFIX}' if f'model/{n}{TF2_SUFFIX}' in keys else None
  else:
    def resolve(name):
      for k in ((f'{TF1_EMA_PREFIX}{name}', name) if ema else (name,)):
        if k in keys:
          return k
      return None
  return Source(prefix, 'tf2' if tf2 else 'tf1', resolve, keys, sorted(skipped), shapes,
                reader.get_tensor, step)
