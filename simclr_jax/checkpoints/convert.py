"""The published SimCLR v1/v2 checkpoints (google-research/simclr) as simclr_jax workdirs.

    python -m simclr_jax.convert --from=PATH --to=WORKDIR [--ema] [--ft_proj_selector=1]
        [--sk_ratio=R] [--skip=REGEX]

    from simclr_jax.checkpoints import convert
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

import dataclasses
import functools
import json
import os
from typing import Callable, Optional

from clu import parameter_overview
from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simclr_jax import cli as cli_lib
from simclr_jax.checkpoints import checkpointing
from simclr_jax import models
from simclr_jax.checkpoints import official_layout
from simclr_jax.checkpoints import official_reader as reader
from simclr_jax.models import resnet

# The reader's names that callers of the converter use.
ConversionError = reader.ConversionError
open_checkpoint = reader.open_checkpoint

SK_RATIO = 0.0625  # SimCLRv2's; any ratio giving the same shapes computes the same function.
IMAGE_SIZE = 224  # The official ImageNet models' input size.
CIFAR_IMAGE_SIZE = 32  # The CIFAR stem is used iff image_size <= 32.
MAX_LISTED = 40  # Unmatched names listed in an error (the count is always given).


@dataclasses.dataclass
class Plan:
  """How a checkpoint maps onto our model: the config and (official name, key, entry) triples."""
  config: ml_collections.ConfigDict
  structure: official_layout.Structure
  mapping: list


# ---- inferring the architecture ----


def _name(entry: official_layout.Entry, fmt: str) -> str:
  return entry.tf2 if fmt == 'tf2' else entry.tf1


def _head_structure(src: reader.Source) -> dict:
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


def _unmatched_message(src: reader.Source, missing: list, unexpected: list, what: str) -> str:
  def listing(names):
    shown = ', '.join(names[:MAX_LISTED])
    return shown + (f', ... ({len(names) - MAX_LISTED} more)' if len(names) > MAX_LISTED else '')
  parts = [f'{src.prefix} ({src.format}) does not map exactly onto {what}; nothing was written.']
  if unexpected:
    parts.append(f'{len(unexpected)} checkpoint variables matched nothing: {listing(unexpected)}.')
  if missing:
    parts.append(f'{len(missing)} variables expected but absent: {listing(missing)}.')
  return ' '.join(parts)


def infer_structure(src: reader.Source, sk: Optional[bool] = None) -> official_layout.Structure:
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
    raise reader.ConversionError(
        f'{src.prefix}: the names and shapes fit {" and ".join(map(str, (m[0] for m in matches)))}'
        '; pass the sk_ratio it was trained with (--sk_ratio=0 or --sk_ratio=0.0625).')
  _, s, missing, unexpected = best
  raise reader.ConversionError(_unmatched_message(
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


def plan(src: reader.Source, ft_proj_selector: int = 0, sk_ratio: Optional[float] = None) -> Plan:
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
    raise reader.ConversionError(
        f'ft_proj_selector={ft_proj_selector}: the checkpoint\'s projection '
        f'head has {hiddens - 1} layers (allowed 0..{hiddens - 1}).')
  source = {'path': src.prefix, 'format': src.format, 'step': src.step}
  config = make_config(s, width, sk_ratio, proj_out, ft_proj_selector, source)
  ours = expected_variables(config, num_classes)
  bad = [f'{_name(e, src.format)} {src.shapes[key[e.path]]} -> {"/".join(e.path)} '
         f'{ours.get((e.collection, e.path))}' for e in entries
         if src.shapes[key[e.path]] != ours.get((e.collection, e.path))]
  uncovered = sorted(set(ours) - {(e.collection, e.path) for e in entries})
  if bad or uncovered:
    raise reader.ConversionError(
        f'{src.prefix}: the names match depth {s.depth} (SK {s.sk}, width {width:g}) but '
        f'{len(bad)} shapes differ from our model'
        f'{" (check --ft_proj_selector)" if s.supervised else ""}: '
        f'{"; ".join(bad[:MAX_LISTED])}'
        + (f'; our variables with no source: {uncovered[:MAX_LISTED]}' if uncovered else '')
        + '. Nothing was written.')
  return Plan(config, s, [(_name(e, src.format), key[e.path], e) for e in entries])


def read_variables(src: reader.Source, p: Plan) -> dict:
  """{'params', 'batch_stats'} as nested dicts of float32 numpy arrays."""
  flat = {}
  for _, key, e in p.mapping:
    value = np.asarray(src.get(key))
    if not np.issubdtype(value.dtype, np.floating):
      raise reader.ConversionError(f'{key} has dtype {value.dtype}; a float was expected.')
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
  src = reader.open_checkpoint(path, ema=ema, skip=skip)
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
    raise reader.ConversionError(f'--to={workdir!r} exists and is not empty; pass a new directory.')
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
  count = lambda tree: int(parameter_overview.count_parameters(tree))
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


def cli(src: str, workdir: str, *, ema: bool = False, ft_proj_selector: int = 0,
        sk_ratio: Optional[float] = None, skip: Optional[str] = None) -> int:
  """`python -m simclr_jax.convert` (simclr_jax/convert.py parses the flags): converts, writes,
  prints the summary; returns the exit status (1 with one `error:` line)."""
  try:
    config, variables = from_official(src, ema=ema, ft_proj_selector=ft_proj_selector,
                                      sk_ratio=sk_ratio, skip=skip)
    write_workdir(workdir, config, variables, int(config.converted_from.step))
  except reader.ConversionError as e:
    cli_lib.print_error(f'{e}')
    return 1
  print(summary(config, variables))
  print(f'Wrote {workdir} (config.json, checkpoints/{config.converted_from.step}/).')
  return 0
