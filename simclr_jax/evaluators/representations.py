"""How pretraining judges its representations: the online probe and kNN monitor during
training, and at the end linear probes and kNN for the SimCLR encoder and two baselines
(the same network at random init, raw pixels), all on features sharded over the devices.

What must survive a restart is kept in the workdir by process 0: the kNN bank's positions
(knn_bank.json: its label pass runs once per run) and every evaluation (eval_history.json).
"""

import functools
import json
from typing import Any, Optional

from etils import epath
import ml_collections
import numpy as np

from simclr_jax import cluster
from simclr_jax import progress
from simclr_jax.data import sources
from simclr_jax.evaluators import feature_store
from simclr_jax.evaluators import knn
from simclr_jax.evaluators import linear_probe

EVAL_HISTORY_FILE = 'eval_history.json'  # Every evaluation of the run, across restarts.
KNN_BANK_FILE = 'knn_bank.json'  # The kNN bank's positions: its label pass runs once per run.


def knn_bank(config: ml_collections.ConfigDict, info, workdir: str
             ) -> tuple[Optional[np.ndarray], Optional[dict]]:
  """(stored positions of the kNN bank in the probe split (knn.bank_indices), or None for the
  whole split; a summary {'split', 'size', 'per_class': [min, max]} or None).

  A subset needs the split's labels: one label-only pass over it, shared out over the
  processes, before training; its result is kept in workdir/knn_bank.json, so a restart reads
  that instead (process 0 reads, every process gets the same bank)."""
  e, split = config.eval, sources.probe_split(config)
  if e.knn_bank_size <= 0 or e.knn_bank_size >= info.num_probe_train:
    return None, None
  key = {'dataset': info.name, 'split': split, 'num_examples': info.num_probe_train,
         'bank_size': e.knn_bank_size, 'num_classes': info.num_classes}
  path = epath.Path(workdir) / KNN_BANK_FILE

  def cached():
    if not path.exists():
      return None
    saved = json.loads(path.read_text())
    return saved if saved.get('key') == key else None

  saved = cluster.process_0_does(cached, f'reading {path}')
  if saved is None:
    labels = feature_store.split_labels(config, split, info.num_probe_train)
    sources.check_labels(labels, info.num_classes, f'kNN bank split {split!r}')
    indices = knn.bank_indices(labels, e.knn_bank_size, info.num_classes)
    counts = np.bincount(labels[indices], minlength=info.num_classes)
    saved = {'key': key, 'indices': indices.tolist(),
             'per_class': [int(counts.min()), int(counts.max())]}
    cluster.process_0_does(lambda: path.write_text(json.dumps(saved)), f'writing {path}')
  indices = np.asarray(saved['indices'], np.int64)
  per_class = max(1, e.knn_bank_size // info.num_classes)
  progress.say(f'kNN bank: {len(indices):,} of the {info.num_probe_train:,} examples of '
               f'{split!r} (the first {per_class} of each class).')
  return indices, {'split': split, 'size': len(indices), 'per_class': saved['per_class']}


def monitor(config, info, mesh, outputs_fn, variables, bank_indices=None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Online linear probe and kNN monitor of `variables` over the whole eval split.

  The kNN bank is the probe split (data.probe_train_split, else data.train_split) or its
  `bank_indices` rows. Features never leave the devices. Returns (metrics, monitored) where
  metrics holds online_probe_top1/top5 (if the model has the online probe), knn_top1/top5 and
  examples_evaluated, and monitored = {'bank': Sharded features, 'eval': Sharded features,
  'knn': the kNN result dict} for reuse by the final probes.
  """
  e, c = config.eval, info.num_classes
  split = sources.probe_split(config)
  fn = functools.partial(outputs_fn, variables)
  bank = feature_store.extract_sharded(config, split, info.num_probe_train, mesh,
                                  lambda x: fn(x)['features'], indices=bank_indices)
  ev = feature_store.extract_sharded(config, config.data.eval_split, info.num_eval, mesh, fn)
  features = ev.select('features')
  nbrs = knn.knn_classify_sharded(bank, features, c, mesh, k=e.knn_k,
                                  temperature=e.knn_temperature, chunk_size=e.knn_chunk_size)
  metrics = {}
  if 'sup_logits' in ev.outputs:  # (kNN has checked the labels.)
    top1, top5 = feature_store.topk_accuracies(ev.outputs['sup_logits'], ev, (1, 5))
    metrics.update(online_probe_top1=top1, online_probe_top5=top5)
  metrics.update(knn_top1=nbrs['top1'], knn_top5=nbrs['top5'],
                 examples_evaluated=feature_store.count(ev))
  return metrics, {'bank': bank, 'eval': features, 'knn': nbrs}


def log_eval(writer, step: int, metrics: dict[str, Any], k: int) -> None:
  """TensorBoard scalars eval/<name> and one progress line."""
  writer.write_scalars(step, {f'eval/{name}': v for name, v in metrics.items()})
  writer.flush()
  probe = (f'online probe top-1 {metrics["online_probe_top1"]:.4f} '
           f'top-5 {metrics["online_probe_top5"]:.4f}, '
           if 'online_probe_top1' in metrics else '')
  progress.say(f'[eval @ step {step}] {probe}kNN (k={k}) top-1 {metrics["knn_top1"]:.4f} '
       f'top-5 {metrics["knn_top5"]:.4f} on {metrics["examples_evaluated"]} examples')


def evaluate_representations(config, info, mesh, init_fn, outputs_fn, variables, monitored,
                             bank_indices=None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Linear probes and kNN on frozen features: SimCLR encoder (`variables`; `monitored` from
  the final `monitor`), random-init encoder, raw pixels. Each probe trains on the whole probe
  split and each kNN uses the monitor's bank; one representation's features are on the devices
  at a time. Returns (linear_probe, knn) dicts keyed by representation."""
  e, c = config.eval, info.num_classes
  split = sources.probe_split(config)
  probe = functools.partial(
      linear_probe.linear_probe_sharded, num_classes=c, mesh=mesh, steps=e.probe_steps,
      batch_size=e.probe_batch_size, learning_rate=e.probe_learning_rate,
      weight_decay=e.probe_weight_decay, seed=config.seed)
  knn_fn = functools.partial(knn.knn_classify_sharded, num_classes=c, mesh=mesh, k=e.knn_k,
                             temperature=e.knn_temperature, chunk_size=e.knn_chunk_size)

  splits = ((split, info.num_probe_train), (config.data.eval_split, info.num_eval))

  def features(embed):
    return tuple(feature_store.extract_sharded(config, s, n, mesh, embed) for s, n in splits)

  train = (monitored['bank'] if bank_indices is None else  # The eval split is monitored's.
           feature_store.extract_sharded(config, split, info.num_probe_train, mesh,
                                    lambda x: outputs_fn(variables, x)['features']))
  probes = {'simclr': probe(train, monitored['eval'])}
  nbrs = {'simclr': monitored['knn']}
  del train
  if e.baselines:
    rand = init_fn()
    rand_vars = {'params': rand.params, 'batch_stats': rand.batch_stats}
    baselines = {
        'random_init': lambda: features(lambda x: outputs_fn(rand_vars, x)['features']),
        'raw_pixels': lambda: tuple(feature_store.pixels(config, s, n, mesh) for s, n in splits)}
    for name, extract in baselines.items():
      train, ev = extract()
      probes[name] = probe(train, ev)
      nbrs[name] = knn_fn(train if bank_indices is None else
                          feature_store.restrict(train, bank_indices), ev)
  return probes, nbrs


class EvalHistory:
  """Every evaluation of a run, kept in workdir/eval_history.json across restarts (process 0
  reads and writes it; every process holds the same entries). An evaluation repeated after a
  resume replaces the earlier one of the same step."""

  def __init__(self, workdir: str):
    self.path = epath.Path(workdir) / EVAL_HISTORY_FILE
    self.entries = cluster.process_0_does(
        lambda: json.loads(self.path.read_text()) if self.path.exists() else [],
        f'reading {self.path}')

  def add(self, entry: dict[str, Any]) -> None:
    by_step = {e['step']: e for e in self.entries}
    by_step[entry['step']] = entry
    self.entries = [by_step[s] for s in sorted(by_step)]
    cluster.process_0_does(lambda: self.path.write_text(json.dumps(self.entries, indent=1)),
                           f'writing {self.path}')
