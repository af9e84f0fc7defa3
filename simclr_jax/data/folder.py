"""A folder of image files as a data set: `config.data.dataset='folder:DIR'` (local or gs://).

Layout (torchvision's ImageFolder, one level up): every sub-folder of DIR is a split.
- A split whose images all sit inside sub-folders is LABELLED: each first-level sub-folder is a
  class (files nested deeper belong to it), DIR/<split>/<class>/**/*.jpg.
- A split with any image directly inside it, or named 'unlabelled' / 'unlabeled', is UNLABELLED:
  every image below it, at any depth, gets label -1 (pretrain on it; the probes then need a
  labelled data.probe_train_split, as for stl10).
Class names are the sorted union of the labelled splits' class folders, so every split maps a
name to the same label.

Files are listed in sorted path order (the split's stored order), the same on every host of a pod
(fingerprint() lets the job compare). Images are recognised by extension (IMAGE_EXTENSIONS);
what is skipped, and why, is recorded per file: hidden files (.DS_Store, ._x.jpg), hidden folders,
other extensions (.txt, Thumbs.db), broken symlinks and symlinked folders (not followed, so no
loops; symlinked files are read), and everything decode.normalize refuses (corrupt, truncated,
smaller than the crop). load_split() decodes every image of the split once (threads; decode.py
applies EXIF orientation and converts to RGB) and keeps the resulting JPEG/PNG bytes in host
memory: the direct mode is for small sets and smoke runs; `python -m simclr_jax.prepare` packs a
folder into TFRecord shards for anything larger (data/packing.py).
"""

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import posixpath
from typing import Optional

import numpy as np

from simclr_jax.data import decode
from simclr_jax.data import errors

PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')
UNLABELLED_NAMES = ('unlabelled', 'unlabeled')
SUMMARY_FILE = 'folder_data.json'  # Written to the workdir: classes, counts, skipped files.
LAYOUT = ('folder:DIR where DIR holds one sub-folder per split: DIR/<split>/<class>/*.jpg '
          '(labelled) or DIR/<split>/*.jpg (unlabelled)')


def is_folder(dataset: str) -> bool:
  return dataset.startswith(PREFIX)


def root_of(dataset: str) -> str:
  """The folder of 'folder:DIR': DIR made absolute if local, trailing '/' dropped."""
  path = dataset[len(PREFIX):].rstrip('/')
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def _join(*parts: str) -> str:
  return posixpath.join(*parts) if '://' in parts[0] else os.path.join(*parts)


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _entries(path: str) -> list[tuple[str, str]]:
  """(name, kind) of a folder's entries, sorted by name; kind: 'dir', 'file', 'dirlink' (a
  symlinked folder), 'broken' (a symlink to nothing)."""
  out = []
  if '://' in path:
    gfile = _gfile()
    for name in gfile.listdir(path):
      # GCS lists folders with a trailing '/': no request per file (millions on a pod's set).
      is_dir = name.endswith('/') or (not path.startswith('gs://')
                                      and gfile.isdir(_join(path, name)))
      out.append((name.rstrip('/'), 'dir' if is_dir else 'file'))
  else:
    with os.scandir(path) as it:
      for e in it:
        if e.is_symlink():
          kind = ('broken' if not os.path.exists(e.path) else
                  'dirlink' if os.path.isdir(e.path) else 'file')
        else:
          kind = 'dir' if e.is_dir() else 'file'
        out.append((e.name, kind))
  return sorted(out)


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if '://' in path else os.path.isdir(path)


def check_root(dataset: str, key: str = 'config.data.dataset') -> str:
  root = root_of(dataset)
  if not _isdir(root):
    raise errors.DataConfigError(f'{key}={dataset!r} is invalid: {root} is not a folder; '
                                 f'allowed: {LAYOUT}.')
  return root


def split_names(root: str) -> list[str]:
  return [n for n, k in _entries(root) if k == 'dir' and not n.startswith('.')]


@dataclasses.dataclass(frozen=True)
class Listing:
  """The files of one split, by name only (nothing read). Paths are relative to the split."""
  split: str
  labelled: bool
  files: tuple[str, ...]  # Candidate images, sorted.
  class_dirs: tuple[Optional[str], ...]  # Each file's class folder (None: unlabelled).
  classes: tuple[str, ...]  # This split's class folders (labelled splits), sorted.
  skipped: tuple[tuple[str, str, str], ...]  # (path, kind, detail).


@functools.lru_cache(maxsize=16)
def list_split(root: str, split: str) -> Listing:
  top = _join(root, split)
  entries = _entries(top)
  has_images = any(k == 'file' and _is_image_name(n) for n, k in entries)
  labelled = not has_images and split.lower() not in UNLABELLED_NAMES
  files, class_dirs, skipped, classes = [], [], [], []
  stack = [('', None)]
  while stack:  # Depth-first; sorted at the end.
    rel, cls = stack.pop()
    for name, kind in _entries(_join(top, rel)) if rel else entries:
      path = f'{rel}/{name}' if rel else name
      if kind == 'dir' and name.startswith('.'):
        skipped.append((path + '/', 'hidden folder', 'not read'))
      elif kind == 'dir':
        here = name if (labelled and not rel) else cls
        if labelled and not rel:
          classes.append(name)
        stack.append((path, here))
      elif kind == 'dirlink':
        skipped.append((path, 'symlinked folder', 'not followed'))
      elif kind == 'broken':
        skipped.append((path, 'broken symlink', 'points to nothing'))
      elif name.startswith('.'):
        skipped.append((path, 'hidden file', name))
      elif not _is_image_name(name):
        skipped.append((path, 'not an image file',
                        f'extension {os.path.splitext(name)[1] or "(none)"!s}'))
      elif labelled and not rel:
        skipped.append((path, 'not in a class folder', 'labelled split'))
      else:
        files.append(path)
        class_dirs.append(cls)
  order = np.argsort(np.array(files, dtype=object)) if files else []
  return Listing(split, labelled, tuple(files[i] for i in order),
                 tuple(class_dirs[i] for i in order), tuple(sorted(classes)),
                 tuple(sorted(skipped)))


def _is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@functools.lru_cache(maxsize=4)
def class_names(root: str) -> tuple[str, ...]:
  """Sorted union of the class folders of every labelled split of the folder."""
  names = set()
  for split in split_names(root):
    listing = list_split(root, split)
    if listing.labelled:
      names.update(listing.classes)
  return tuple(sorted(names))


@dataclasses.dataclass(frozen=True)
class Split:
  """A checked split in host memory, sorted path order."""
  name: str
  labelled: bool
  files: tuple[str, ...]  # Kept images, relative to the split.
  images: np.ndarray  # object [n]: RGB JPEG/PNG bytes (decode.normalize).
  labels: np.ndarray  # int32 [n], -1 if unlabelled.
  classes: tuple[str, ...]  # The whole folder's class names (label i = classes[i]).
  skipped: tuple[tuple[str, str, str], ...]  # (path, kind, detail), names and decoding.
  changes: dict  # {what was done: count} (EXIF orientation applied, CMYK -> RGB, ...).


def check_split_name(dataset: str, split: str, key: str) -> str:
  root = check_root(dataset)
  names = split_names(root)
  if split not in names:
    raise errors.DataConfigError(f'{key}={split!r} is not a split of {dataset}; allowed: '
                                 f'{names} (the sub-folders of {root}).')
  return root


def load_split(dataset: str, split: str, min_side: int, key: str = 'split') -> Split:
  """Lists, decodes and checks one split (once per process: cached); raises DataConfigError
  (naming `key`) if it holds no usable image, or if a class folder of a labelled split holds
  none."""
  root = check_split_name(dataset, split, key)
  out = _decoded(root, split, min_side)
  if not out.files:
    raise errors.DataConfigError(
        f'{key}={split!r} of {dataset} holds no usable image ({skip_text(out.skipped)}); '
        f'allowed: a split with at least one {"/".join(IMAGE_EXTENSIONS)} file.')
  if out.labelled:
    counts = np.bincount(out.labels, minlength=len(out.classes))
    index = {c: i for i, c in enumerate(out.classes)}
    empty = [c for c in list_split(root, split).classes if counts[index[c]] == 0]
    if empty:
      raise errors.DataConfigError(
          f'{key}={split!r} of {dataset} is labelled (one sub-folder per class) but class '
          f'folder(s) {empty[:5]} hold no usable image; allowed: a labelled split whose every '
          'class folder holds at least one image (add images or remove the folder), or an '
          "unlabelled split (images directly inside it, or named 'unlabelled').")
  return out


@functools.lru_cache(maxsize=8)
def _decoded(root: str, split: str, min_side: int) -> Split:
  listing = list_split(root, split)
  classes = class_names(root)
  index = {c: i for i, c in enumerate(classes)}
  top = _join(root, split)
  jobs = [(_join(top, f), min_side, 0) for f in listing.files]
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    results = list(pool.map(decode.normalize_file, jobs, chunksize=8))
  kept, images, labels, skipped = [], [], [], list(listing.skipped)
  changes = collections.Counter()
  for f, cls, r in zip(listing.files, listing.class_dirs, results):
    if r[0] == 'bad':
      skipped.append((f, r[1], r[2]))
      continue
    kept.append(f)
    images.append(r[1])
    labels.append(-1 if cls is None else index[cls])
    changes.update(c.split(' to ')[0] for c in r[4])
  out = Split(split, listing.labelled, tuple(kept), np.empty((len(images),), object),
              np.asarray(labels, np.int32), classes, tuple(sorted(skipped)), dict(changes))
  out.images[:] = images
  return out


def skip_text(skipped) -> str:
  if not skipped:
    return 'no files'
  counts = collections.Counter(kind for _, kind, _ in skipped)
  return f'{len(skipped)} file(s) skipped: ' + ', '.join(f'{n} {k}' for k, n in
                                                       counts.most_common())


def summary_line(dataset: str, s: Split) -> str:
  """One line per split for the start of a run."""
  if s.labelled:
    counts = np.bincount(s.labels, minlength=len(s.classes))
    per = ', '.join(f'{c} {n}' for c, n in zip(s.classes, counts) if n)
    what = f'{len(s.files):,} images in {int(np.count_nonzero(counts))} classes ({per})'
  else:
    what = f'{len(s.files):,} unlabelled images'
  return (f'{dataset} {s.name!r}: {what}; '
          + (skip_text(s.skipped) if s.skipped else 'no file skipped')
          + change_text(s.changes) + '.')


def change_text(changes: dict) -> str:
  """'; 3 converted (2 CMYK -> RGB, 1 EXIF orientation 6 applied)', or '' if none."""
  if not changes:
    return ''
  return (f'; {sum(changes.values())} converted ('
          + ', '.join(f'{n} {k}' for k, n in changes.items()) + ')')


def summary(dataset: str, splits: list[Split]) -> dict:
  """What SUMMARY_FILE holds: classes, per-split counts, every skipped file with its reason."""
  out = {'dataset': dataset, 'classes': list(splits[0].classes) if splits else [], 'splits': {}}
  for s in splits:
    out['splits'][s.name] = {
        'labelled': s.labelled, 'num_images': len(s.files),
        'per_class': ({c: int(n) for c, n in zip(s.classes, np.bincount(
            s.labels, minlength=len(s.classes)))} if s.labelled else {}),
        'converted': s.changes,
        'skipped': [{'file': f, 'reason': f'{k}: {d}' if d else k} for f, k, d in s.skipped]}
  return out


def fingerprint(splits: list[Split]) -> str:
  """A digest of every kept file name and label, to check that all hosts see the same split."""
  h = hashlib.sha256()
  for s in splits:
    h.update(s.name.encode())
    for f, y in zip(s.files, s.labels):
      h.update(f'\0{f}\0{int(y)}'.encode())
  return h.hexdigest()[:16]
