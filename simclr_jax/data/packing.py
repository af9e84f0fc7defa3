"""A folder of images (data/folder.py's layout) packed into a TFDS data set: sharded TFRecord files
plus TFDS metadata, the work behind `python -m simclr_jax.prepare`.

The output, DATA_DIR/NAME/1.0.0/, is what `tfds.builder_from_directory` reads and what training
reads with `--config.data.dataset=NAME --config.data.data_dir=DATA_DIR` (TFDS finds it by name),
including the per-process file shards of `data.cache=False` (data/streams.py: file i goes to
process i mod P). Features: 'image' (RGB JPEG/PNG bytes from decode.normalize), 'label'
(ClassLabel over the folder's sorted class names; -1 in unlabelled splits) and 'file_name' (the
path inside the split, to trace an example back to its file).

Every split keeps the folder's sorted order; shard k of S holds the kept images of files
[k*n/S, (k+1)*n/S). Decoding runs in a pool of worker processes (spawned, importing only Pillow
and NumPy); this process serializes and writes, in order. Everything is written under
DATA_DIR/NAME/.incomplete-<id>/ and renamed to 1.0.0/ at the end, so an interrupted prepare leaves
no version directory TFDS would read; its leftovers are removed by the next run.
"""

import collections
import concurrent.futures
import math
import multiprocessing
import os
import re
import sys
import time
import uuid
from typing import Callable, Optional

from simclr_jax.data import decode
from simclr_jax.data import errors
from simclr_jax.data import folder

VERSION = '1.0.0'
FILENAME_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
SKIPPED_FILE = 'skipped_files.tsv'  # split, file, reason: one line per skipped file.
IMAGES_PER_SHARD = 5000  # Auto shard count: at most this many files per shard (~0.5 GB ImageNet).
INCOMPLETE = '.incomplete-'
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


class PrepareError(errors.DataConfigError):
  """Bad input to prepare: one line naming the flag, the value and what is allowed."""


def default_name(root: str) -> str:
  name = re.sub(r'[^a-z0-9_]+', '_', os.path.basename(root.rstrip('/')).lower()).strip('_')
  return name if _NAME.match(name or '') else f'images_{name}'.rstrip('_')


def shard_count(n: int, num_processes: int, requested: int = 0) -> int:
  """Files for a split of n files: `requested`, or the smallest multiple of num_processes with
  at most IMAGES_PER_SHARD files each; never more than n (no empty shards)."""
  if requested:
    return min(requested, max(n, 1))
  k = max(1, math.ceil(n / IMAGES_PER_SHARD))
  return min(-(-k // num_processes) * num_processes, max(n, 1))


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def check_args(images: str, out: str, name: str, num_processes: int, num_shards: int) -> str:
  if not _NAME.match(name):
    raise PrepareError(f'--name={name!r} is invalid; allowed: a TFDS name, lower case letters, '
                       'digits and _ starting with a letter, e.g. my_photos.')
  if num_processes < 1:
    raise PrepareError(f'--num_processes={num_processes} is invalid; allowed: an integer >= 1 '
                       '(the processes that will read the set, e.g. 16 for a v3-128).')
  if num_shards and num_shards < num_processes:
    raise PrepareError(f'--num_shards={num_shards} is invalid; allowed: 0 (auto) or at least '
                       f'--num_processes={num_processes} (each process reads its own files).')
  root = folder.root_of(folder.PREFIX + images)
  layout = ('a folder with one sub-folder per split: DIR/<split>/<class>/*.jpg (labelled) or '
            'DIR/<split>/*.jpg (unlabelled)')
  if not images or not _gfile().isdir(root):
    raise PrepareError(f'--images={images!r} is not a folder; allowed: {layout}.')
  if not folder.split_names(root):
    raise PrepareError(f'--images={images!r} holds no sub-folder; allowed: {layout} (e.g. move '
                       'the images into DIR/train/).')
  if not out:
    raise PrepareError('--out is required: the TFDS data_dir to write into.')
  return root


def prepare(images: str, out: str, name: Optional[str] = None, *, image_size: int = 0,
            max_side: int = 0, num_processes: int = 1, num_shards: int = 0, workers: int = 0,
            overwrite: bool = False, say: Callable[[str], None] = print) -> dict:
  """Packs every split of `images`; returns a summary dict. Raises PrepareError (bad input,
  an empty split or class folder: nothing is left behind)."""
  t0 = time.time()
  name = name or default_name(images)
  root = check_args(images, out, name, num_processes, num_shards)
  gfile = _gfile()
  base = f'{out.rstrip("/")}/{name}'
  final = f'{base}/{VERSION}'
  if gfile.exists(final) and not overwrite:
    raise PrepareError(f'--out={out!r} already holds {name} {VERSION} ({final}); allowed: '
                       'another --out or --name, or --overwrite to replace it.')
  if gfile.exists(base):
    for entry in gfile.listdir(base):
      if entry.startswith(INCOMPLETE):
        say(f'Removing an interrupted prepare\'s leftovers: {base}/{entry.rstrip("/")}')
        gfile.rmtree(f'{base}/{entry.rstrip("/")}')
  tmp = f'{base}/{INCOMPLETE}{uuid.uuid4().hex[:8]}'
  gfile.makedirs(tmp)
  workers = workers or os.cpu_count() or 1
  try:
    summary = _write_all(root, name, tmp, image_size=image_size, max_side=max_side,
                         num_processes=num_processes, num_shards=num_shards, workers=workers,
                         say=say)
  except BaseException:
    gfile.rmtree(tmp)
    raise
  if gfile.exists(final):
    old = f'{base}/{INCOMPLETE}replaced-{uuid.uuid4().hex[:8]}'
    gfile.rename(final, old)
    gfile.rename(tmp, final)
    gfile.rmtree(old)
    say(f'Replaced the previous {final} (--overwrite).')
  else:
    gfile.rename(tmp, final)
  seconds = time.time() - t0
  summary.update(path=final, seconds=seconds, workers=workers)
  n_files = sum(s['files'] for s in summary['splits'].values())
  kept = sum(s['examples'] for s in summary['splits'].values())
  skipped = sum(sum(s['skipped'].values()) for s in summary['splits'].values())
  busy = sum(s['seconds'] for s in summary['splits'].values())  # Without imports, pool start.
  say(f'Wrote {final}: {kept:,} images in {len(summary["splits"])} split(s), '
      f'{len(summary["classes"])} classes; {skipped:,} file(s) skipped'
      + (f' (listed in {final}/{SKIPPED_FILE})' if skipped else '')
      + f'; {n_files / max(busy, 1e-9):,.0f} files/s decoded and written by {workers} worker '
      f'process(es), {seconds:.0f} s in all. Train on it: --config.data.dataset={name} '
      f'--config.data.data_dir={out}')
  return summary


def _write_all(root, name, tmp, *, image_size, max_side, num_processes, num_shards, workers,
               say) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  classes = folder.class_names(root)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.ClassLabel(names=list(classes)),
      'file_name': tfds.features.Text()})
  template = tfds.core.ShardedFileTemplate(
      data_dir=tfds.core.Path(tmp), template=FILENAME_TEMPLATE, dataset_name=name,
      filetype_suffix='tfrecord')
  split_infos, skipped_lines, splits = [], [], {}
  ctx = multiprocessing.get_context('spawn')  # This process runs TF threads: no fork.
  # An executor, not multiprocessing.Pool: a worker that dies raises BrokenProcessPool here
  # instead of being replaced forever.
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    for split in folder.split_names(root):
      info, skipped, summary = _write_split(
          pool, workers, root, split, classes, features, template.replace(split=split),
          min_side=image_size, max_side=max_side, num_processes=num_processes,
          num_shards=num_shards, say=say)
      split_infos.append(info)
      skipped_lines += [f'{split}\t{f}\t{k}: {d}' if d else f'{split}\t{f}\t{k}'
                        for f, k, d in skipped]
      splits[split] = summary
  gfile = _gfile()
  with gfile.GFile(f'{tmp}/{SKIPPED_FILE}', 'w') as f:
    f.write('split\tfile\treason\n' + ''.join(line + '\n' for line in skipped_lines))
  tfds.folder_dataset.write_metadata(
      data_dir=tmp, features=features, split_infos=split_infos, version=VERSION,
      filename_template=template, check_data=False,
      # (image, label) as TFDS builders declare them: as_supervised=True readers (the official
      # run.py) need it.
      supervised_keys=('image', 'label'),
      description=f'Images of {root}, packed by python -m simclr_jax.prepare.')
  return {'name': name, 'classes': list(classes), 'splits': splits}


def _write_split(pool, workers, root, split, classes, features, template, *, min_side, max_side,
                 num_processes, num_shards, say):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  listing = folder.list_split(root, split)
  index = {c: i for i, c in enumerate(classes)}
  top = f'{root}/{split}'
  n = len(listing.files)
  shards = shard_count(n, num_processes, num_shards)
  if shards < num_processes:
    note = (f'fewer files than --num_processes={num_processes}: file-backed training on that '
            'many processes will be refused')
  else:
    note = f'each of the {num_processes} process(es) reads {shards // num_processes}' + (
        '' if shards % num_processes == 0 else ' or 1 more') + ' file(s)'
  say(f'{split}: {n:,} image file(s), {"labelled" if listing.labelled else "unlabelled"} -> '
      f'{shards} shard(s) for --num_processes={num_processes} ({note}).')
  jobs = [(f'{top}/{f}', min_side, max_side) for f in listing.files]
  results = pool.map(decode.normalize_file, jobs, chunksize=max(1, min(32, n // (8 * workers))))
  bounds = [n * k // shards for k in range(shards + 1)]
  lengths, skipped, changes = [], list(listing.skipped), collections.Counter()
  counts = collections.Counter()
  nbytes, done, t0, shown = 0, 0, time.time(), time.time()
  for k in range(shards):
    path = template.sharded_filepath(shard_index=k, num_shards=shards)
    kept = 0
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
      for i in range(bounds[k], bounds[k + 1]):
        r = next(results)
        done += 1
        f, cls = listing.files[i], listing.class_dirs[i]
        if r[0] == 'bad':
          skipped.append((f, r[1], r[2]))
        else:
          label = -1 if cls is None else index[cls]
          record = features.serialize_example({'image': r[1], 'label': label, 'file_name': f})
          writer.write(record)
          nbytes += len(record)
          kept += 1
          counts[label] += 1
          changes.update(c.split(' to ')[0] for c in r[4])
        if time.time() - shown > (1 if sys.stderr.isatty() else 10):
          shown = time.time()
          _progress(split, done, n, len(skipped) - len(listing.skipped), t0)
    lengths.append(kept)
  _progress(split, done, n, len(skipped) - len(listing.skipped), t0, end=True)
  if not sum(lengths):
    raise PrepareError(f'--images: split {split!r} ({top}) holds no usable image '
                       f'({folder.skip_text(skipped)}); allowed: a split with at least one '
                       f'{"/".join(folder.IMAGE_EXTENSIONS)} file (or remove the folder).')
  empty = [c for c in listing.classes if not counts[index[c]]]
  if listing.labelled and empty:
    raise PrepareError(f'--images: split {split!r} is labelled (one sub-folder per class) but '
                       f'class folder(s) {empty[:5]} hold no usable image; allowed: every class '
                       'folder with at least one image (add images or remove the folder).')
  skipped.sort()
  info = tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=nbytes,
                             filename_template=template)
  kinds = collections.Counter(k for _, k, _ in skipped)
  summary = {'files': n, 'examples': sum(lengths), 'shards': shards, 'labelled': listing.labelled,
             'skipped': dict(kinds), 'converted': dict(changes), 'seconds': time.time() - t0}
  say(f'{split}: {sum(lengths):,} images kept; '
      + (folder.skip_text(skipped) if skipped else 'no file skipped')
      + folder.change_text(changes) + '.')
  return info, skipped, summary


def _progress(split: str, done: int, n: int, bad: int, t0: float, end: bool = False) -> None:
  """A progress bar on stderr (redrawn in place on a terminal, a line every 10 s otherwise)."""
  rate = done / max(time.time() - t0, 1e-9)
  width = 30
  fill = int(width * done / max(n, 1))
  eta = (n - done) / rate if rate > 0 else 0
  line = (f'{split}: [{"#" * fill}{"." * (width - fill)}] {done:,}/{n:,} files, {bad:,} bad, '
          f'{rate:,.0f}/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}')
  tty = sys.stderr.isatty()
  sys.stderr.write(('\r' + line + ('\n' if end else '')) if tty else line + '\n')
  sys.stderr.flush()
