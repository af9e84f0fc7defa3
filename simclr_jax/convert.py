"""The published SimCLR v1/v2 checkpoints (google-research/simclr) as simclr_jax workdirs.

    python -m simclr_jax.convert --from=PATH --to=WORKDIR [--ema] [--ft_proj_selector=1]
        [--sk_ratio=R] [--skip=REGEX]

    from simclr_jax import convert
    config, variables = convert.from_official(PATH)   # {'params', 'batch_stats'}, numpy float32

PATH is an official checkpoint, local or gs:// (read by TensorFlow's checkpoint reader):
- TF2 (the official `tf2/` code): a `tf.train.Checkpoint` prefix (`.../ckpt-N`), its model_dir
  (the latest checkpoint in it), or a SavedModel directory (its `variables/variables`). Variables
  are found by their object paths under the model (official_layout.py), through the checkpoint's
  object graph, so the aliases a SavedModel adds (`trainable_variables_list/N`, ...) do not matter.
- TF1 (the root code): a `model.ckpt-N` prefix or its directory (`base_model/conv2d_K/...`,
  `head_contrastive/...`, `head_supervised/...`). SimCLRv2's TF1 releases also hold an EMA copy
  of the weights (`ema_model/...`); `ema=True` takes those instead.

Depth, width, SK (and its ratio), the stem, the projection head (layers, output width) and the
supervised head (classes) are inferred from the variable names and shapes. Every model variable
must map onto our model and every variable of ours must be found, with equal shapes; otherwise
nothing is written and ConversionError lists the unmatched names. Only optimiser state, step
counters and (unless chosen) EMA copies are skipped, and the summary says how many.

Not always inferable from a checkpoint: whether a TF1 ResNet-18/34 with the CIFAR stem used SK
(there SK only replaces strided shortcut convs by average pooling, which has no variables: pass
`sk_ratio`; the error says so), and `ft_proj_selector`, the projection-head layer the supervised
head reads. A head on a projection layer as wide as the encoder output has the same shape as
one on the encoder output; with 0 (the default) the encoder output feeds it. The official
README's fine-tuning command uses --ft_proj_selector=1 (likely what the SimCLRv2 fine-tuned
releases used; their variables cannot tell).

The workdir holds config.json and checkpoints/<step>/ as a pretraining run writes them (step =
the checkpoint's global step), so load.load_encoder and the linear_eval / finetune jobs
(--config.init_checkpoint=WORKDIR) take it as it is. Its opt_state is empty: a pretraining run
pointed at it as --workdir would find its checkpoint unrestorable (and move it aside); use it
only as init_checkpoint or through load.py. Images are RGB in [0, 1] without mean/std
normalisation, as the official models expect; data.image_size is 224 (32 with the CIFAR stem).
"""

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
from typing import Callable, Optional

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax import models
from simclr_jax import official_layout
from simclr_jax.models import resnet

TF2_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
OBJECT_GRAPH = '_CHECKPOINTABLE_OBJECT_GRAPH'
TF1_EMA_PREFIX = 'ema_model/'
# Not model weights: optimiser slots and state, counters. Everything else must map.
TF2_SKIP = re.compile(r'(^|/)\.OPTIMIZER_SLOT/|^(optimizer|save_counter|global_step)/'
                      rf'|^{OBJECT_GRAPH}$')
TF1_SKIP = re.compile(r'^global_step$|/(Momentum|Adam|Adam_1|ExponentialMovingAverage)$'
                      r'|^beta[12]_power$')
SK_RATIO = 0.0625  # SimCLRv2's; any ratio giving the same shapes computes the same function.
IMAGE_SIZE = 224  # The official ImageNet models' input size.
CIFAR_IMAGE_SIZE = 32  # The CIFAR stem is used iff image_size <= 32.
MAX_LISTED = 40  # Unmatched names listed in an error (the count is always given).


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


@dataclasses.dataclass
class Plan:
  """How a checkpoint maps onto our model: the config and (official name, key, entry) triples."""
  config: ml_collections.ConfigDict
  structure: official_layout.Structure
  mapping: list


# ---- opening a checkpoint ----


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


# ---- inferring the architecture ----


def _name(entry: official_layout.Entry, fmt: str) -> str:
  return entry.tf2 if fmt == 'tf2' else entry.tf1


def _head_structure(src: Source) -> dict:
  """proj_layers, proj_linear and supervised, probed by name."""
  if src.format == 'tf2':
    proj = lambda j: f'_projection_head/linear_layers/{j}/dense/kernel'
    sup = 'supervised_head/linear_layer/dense/kernel'
    linear = False
  else:
    proj = lambda j: f'head_contrastive/nl_{j}/dense/kernel'
    sup = 'head_supervised/linear_layer/dense/kernel'
    linear = src.resolve('head_contrastive/l_0/dense/kernel') is not None
  layers = 1 if linear else 0
  while not linear and src.resolve(proj(layers)) is not None:
    layers += 1
  return dict(proj_layers=layers, proj_linear=linear, supervised=src.resolve(sup) is not None)


def _unmatched_message(src: Source, missing: list, unexpected: list, what: str) -> str:
  def listing(names):
    shown = ', '.join(names[:MAX_LISTED])
    return shown + (f', ... ({len(names) - MAX_LISTED} more)' if len(names) > MAX_LISTED else '')
  parts = [f'{src.prefix} ({src.format}) does not map exactly onto {what}; nothing was written.']
  if unexpected:
    parts.append(f'{len(unexpected)} checkpoint variables matched nothing: {listing(unexpected)}.')
  if missing:
    parts.append(f'{len(missing)} variables expected but absent: {listing(missing)}.')
  return ' '.join(parts)


def infer_structure(src: Source, sk: Optional[bool] = None) -> official_layout.Structure:
  """The one structure whose names account for every key of the checkpoint (with SK or not, if
  `sk` is given)."""
  head = _head_structure(src)
  best, matches = None, []
  for enc in official_layout.encoder_structures():
    if sk is not None and enc.sk != sk:
      continue
    s = dataclasses.replace(enc, **head)
    names = [_name(e, src.format) for e in official_layout.entries(s)]
    found = {n: src.resolve(n) for n in names}
    missing = [n for n, k in found.items() if k is None]
    unexpected = sorted(src.keys - set(found.values()))
    if not missing and not unexpected:
      matches.append((s, found))
    stem = found[_name(official_layout.entries(s)[0], src.format)]
    wrong_stem = stem is not None and (src.shapes[stem][0] == 3) != (s.cifar_stem or s.sk)
    score = len(missing) + len(unexpected) + 0.5 * wrong_stem  # Ties: the stem's kernel decides.
    if best is None or score < best[0]:
      best = (score, s, missing, unexpected)
  if len(matches) > 1:  # The CIFAR and the ImageNet stem differ only in the stem kernel's size.
    stem = lambda s, f: src.shapes[f[_name(official_layout.entries(s)[0], src.format)]]
    matches = [(s, f) for s, f in matches if (stem(s, f)[0] == 3) == (s.cifar_stem or s.sk)]
  if len(matches) == 1:
    return matches[0][0]
  if matches:
    # TF1 names of basic-block nets with the CIFAR stem do not show SK, which there only swaps
    # the strided shortcut conv for ResNet-D pooling (no variables): it must be told.
    raise ConversionError(
        f'{src.prefix}: the names and shapes fit {" and ".join(map(str, (m[0] for m in matches)))}'
        '; pass the sk_ratio it was trained with (--sk_ratio=0 or --sk_ratio=0.0625).')
  _, s, missing, unexpected = best
  raise ConversionError(_unmatched_message(
      src, missing, unexpected,
      f'any simclr_jax ResNet (closest: depth {s.depth}, SK {s.sk}, CIFAR stem {s.cifar_stem}, '
      f'{s.proj_layers} projection layers, supervised head {s.supervised})'))


def _sk_ratio(shape_of: Callable, width: float, depth: int) -> float:
  """A ratio reproducing every SK reduction width max(int(filters * ratio), 32)."""
  found = []
  for g, n in enumerate(resnet.BLOCKS_PER_GROUP[depth]):
    filters = int((64, 128, 256, 512)[g] * width)
    for b in range(n):
      mid = shape_of(('encoder', f'group{g + 1}_block{b}', 'sk_conv2', 'fc_reduce'))
      if mid is not None:
        found.append((filters, mid))
  for ratio in [SK_RATIO] + [mid / f for f, mid in found if mid > resnet.SK_MIN_DIM]:
    if all(max(int(f * ratio), resnet.SK_MIN_DIM) == mid for f, mid in found):
      return ratio
  return SK_RATIO  # Inconsistent widths: the shape check reports them.


def make_config(structure: official_layout.Structure, width: float, sk_ratio: float,
                proj_out_dim: int, ft_proj_selector: int, source: dict
                ) -> ml_collections.ConfigDict:
  """The config.json of a converted workdir: what load.py and the linear-eval jobs read."""
  s = structure
  mode = 'linear' if s.proj_linear else ('nonlinear' if s.proj_layers else 'none')
  return ml_collections.ConfigDict({
      'name': f'official {source["format"]} {os.path.basename(source["path"])}',
      'mode': 'pretrain',
      'seed': 0,
      'data': {'image_size': CIFAR_IMAGE_SIZE if s.cifar_stem else IMAGE_SIZE},
      'model': {
          'resnet_depth': s.depth,
          'width_multiplier': float(width),
          'sk_ratio': float(sk_ratio) if s.sk else 0.0,
          'proj_head_mode': mode,
          'proj_out_dim': int(proj_out_dim),
          'num_proj_layers': max(s.proj_layers, 1) if mode != 'none' else 0,
          'ft_proj_selector': int(ft_proj_selector),
          'batch_norm_decay': 0.9,
          'dtype': 'float32',
      },
      'train': {'lineareval_while_pretraining': s.supervised},
      'converted_from': source,
  })


def expected_variables(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """{(collection, path): shape} of our model for `config` (abstract: nothing is allocated)."""
  return _expected(config.model.to_json(sort_keys=True), int(config.data.image_size),
                   bool(config.train.lineareval_while_pretraining), num_classes)


@functools.lru_cache(maxsize=32)
def _expected(model_json: str, image_size: int, probe: bool, num_classes: int) -> dict:
  config = ml_collections.ConfigDict({
      'model': json.loads(model_json), 'data': {'image_size': image_size},
      'train': {'lineareval_while_pretraining': probe}})
  model = models.build_model(config, num_classes)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, 3), jnp.float32))
  return {(c, p): tuple(v.shape) for c in shapes
          for p, v in traverse_util.flatten_dict(shapes[c]).items()}


def plan(src: Source, ft_proj_selector: int = 0, sk_ratio: Optional[float] = None) -> Plan:
  """Infers the architecture (sk_ratio: given rather than inferred) and maps every key; raises
  ConversionError on any mismatch."""
  s = infer_structure(src, None if sk_ratio is None else sk_ratio > 0)
  entries = official_layout.entries(s)
  key = {e.path: src.resolve(_name(e, src.format)) for e in entries}

  def shape_of(prefix, leaf='kernel'):
    path = prefix + (('Conv_0', leaf) if prefix[0] == 'encoder' else (leaf,))
    return src.shapes[key[path]][-1] if path in key else None

  stem = ('encoder', 'stem_conv3' if s.sk and not s.cifar_stem else 'stem_conv')
  width = shape_of(stem) / 64
  if sk_ratio is None:
    sk_ratio = _sk_ratio(shape_of, width, s.depth) if s.sk else 0.0
  proj_out = 128
  if s.proj_layers:
    last = 'linear' if s.proj_linear else f'nl_{s.proj_layers - 1}'
    proj_out = shape_of(('proj_head', last, 'dense'))
  num_classes = shape_of(('head_supervised', 'dense')) if s.supervised else 0
  hiddens = 1 + (s.proj_layers if not s.proj_linear else 1)
  if not 0 <= ft_proj_selector < hiddens:
    raise ConversionError(f'ft_proj_selector={ft_proj_selector}: the checkpoint\'s projection '
                          f'head has {hiddens - 1} layers (allowed 0..{hiddens - 1}).')
  source = {'path': src.prefix, 'format': src.format, 'step': src.step}
  config = make_config(s, width, sk_ratio, proj_out, ft_proj_selector, source)
  ours = expected_variables(config, num_classes)
  bad = [f'{_name(e, src.format)} {src.shapes[key[e.path]]} -> {"/".join(e.path)} '
         f'{ours.get((e.collection, e.path))}' for e in entries
         if src.shapes[key[e.path]] != ours.get((e.collection, e.path))]
  uncovered = sorted(set(ours) - {(e.collection, e.path) for e in entries})
  if bad or uncovered:
    raise ConversionError(
        f'{src.prefix}: the names match depth {s.depth} (SK {s.sk}, width {width:g}) but '
        f'{len(bad)} shapes differ from our model'
        f'{" (check --ft_proj_selector)" if s.supervised else ""}: '
        f'{"; ".join(bad[:MAX_LISTED])}'
        + (f'; our variables with no source: {uncovered[:MAX_LISTED]}' if uncovered else '')
        + '. Nothing was written.')
  return Plan(config, s, [(_name(e, src.format), key[e.path], e) for e in entries])


def read_variables(src: Source, p: Plan) -> dict:
  """{'params', 'batch_stats'} as nested dicts of float32 numpy arrays."""
  flat = {}
  for _, key, e in p.mapping:
    value = np.asarray(src.get(key))
    if not np.issubdtype(value.dtype, np.floating):
      raise ConversionError(f'{key} has dtype {value.dtype}; a float was expected.')
    flat[(e.collection,) + e.path] = value.astype(np.float32)
  out = traverse_util.unflatten_dict(flat)
  out.setdefault('batch_stats', {})
  return out


def from_official(path: str, *, ema: bool = False, ft_proj_selector: int = 0,
                  sk_ratio: Optional[float] = None, skip: Optional[str] = None
                  ) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, {'params', 'batch_stats'}) of the official checkpoint PATH (see module doc).

  ema: TF1 only, take the EMA copy. ft_proj_selector: the projection layer the supervised head
  reads. sk_ratio: the official flag's value, if the checkpoint cannot show it. skip: a regular
  expression of further checkpoint keys to leave out on purpose.
  """
  src = open_checkpoint(path, ema=ema, skip=skip)
  p = plan(src, ft_proj_selector, sk_ratio)
  variables = read_variables(src, p)
  p.config.converted_from.update(ema=ema, skipped=len(src.skipped), mapped=len(p.mapping))
  return p.config, variables


# ---- writing the workdir ----


def write_workdir(workdir: str, config: ml_collections.ConfigDict, variables: dict,
                  step: int) -> None:
  """config.json + checkpoints/<step>/ (the TrainState layout: step, params, batch_stats and an
  empty opt_state), written beside WORKDIR and renamed into place, so a failure leaves nothing
  half-written. WORKDIR must not exist or be empty."""
  target = epath.Path(workdir)
  if target.exists() and any(target.iterdir()):
    raise ConversionError(f'--to={workdir!r} exists and is not empty; pass a new directory.')
  tmp = target.parent / f'.{target.name}.converting-{os.getpid()}'
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  try:
    (tmp / checkpointing.CONFIG_FILE).write_text(
        config.to_json_best_effort(indent=2, sort_keys=True))
    state = {'step': jnp.asarray(step, jnp.int32),
             'params': jax.tree.map(jnp.asarray, variables['params']),
             'batch_stats': jax.tree.map(jnp.asarray, variables.get('batch_stats', {})),
             'opt_state': {}}
    mngr = checkpointing.manager(str(tmp), keep=1)
    checkpointing.save(mngr, step, state)
    mngr.wait_until_finished()
    mngr.close()
    if target.exists():
      target.rmdir()
    tmp.rename(target)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    raise


def summary(config: ml_collections.ConfigDict, variables: dict) -> str:
  m, src = config.model, config.converted_from
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  enc = count(variables['params']['encoder'])
  head = (f'{m.proj_head_mode} projection head ({m.num_proj_layers} layers, out {m.proj_out_dim})'
          if m.proj_head_mode != 'none' else 'no projection head')
  sup = (f'supervised head {variables["params"]["head_supervised"]["dense"]["kernel"].shape[1]} '
         f'classes on hiddens[{m.ft_proj_selector}]' if 'head_supervised' in variables['params']
         else 'no supervised head')
  return (f'{src.path} ({src.format}{", EMA weights" if src.get("ema") else ""}, step '
          f'{src.step}): ResNet-{m.resnet_depth} {m.width_multiplier:g}x, SK ratio '
          f'{m.sk_ratio:g}, {"CIFAR" if config.data.image_size <= 32 else "ImageNet"} stem, '
          f'{enc / 1e6:.2f}M encoder parameters; {head}; {sup}. {src.mapped} tensors mapped, '
          f'{src.skipped} skipped (optimiser state, counters, '
          f'{"non-EMA" if src.get("ema") else "EMA"} copies).')


def main(argv: Optional[list] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m simclr_jax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='src', required=True,
                      help='official checkpoint prefix, its directory or a SavedModel; gs:// ok')
  parser.add_argument('--to', dest='workdir', required=True, help='new simclr_jax workdir')
  parser.add_argument('--ema', action='store_true', help='TF1 SimCLRv2: take the EMA weights')
  parser.add_argument('--ft_proj_selector', type=int, default=0,
                      help='projection layer the supervised head reads (0: encoder output)')
  parser.add_argument('--sk_ratio', type=float, default=None,
                      help='the official sk_ratio flag, where the checkpoint cannot show it')
  parser.add_argument('--skip', default=None,
                      help='regex of further checkpoint keys to leave out on purpose')
  args = parser.parse_args(argv)
  try:
    config, variables = from_official(args.src, ema=args.ema,
                                      ft_proj_selector=args.ft_proj_selector,
                                      sk_ratio=args.sk_ratio, skip=args.skip)
    write_workdir(args.workdir, config, variables, int(config.converted_from.step))
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(summary(config, variables))
  print(f'Wrote {args.workdir} (config.json, checkpoints/{config.converted_from.step}/).')
  return 0


if __name__ == '__main__':
  sys.exit(main())
