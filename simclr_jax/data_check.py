"""What a job checks and says about a `folder:DIR` data set before anything compiles: that every
process sees the same files (a digest of the kept names and labels, compared over processes), one
line per split (classes, counts, skipped files and conversions), and data/folder.py's
SUMMARY_FILE in the workdir with every skipped file and its reason. Other data sets: nothing.
"""

import json

from etils import epath
import ml_collections

from simclr_jax import cluster
from simclr_jax import progress
from simclr_jax.data import folder
from simclr_jax.data import sources


def check_same_files(config: ml_collections.ConfigDict) -> None:
  """Raises ClusterError on every process unless all list and keep the same files (a
  collective for folder data sets; call it on every process)."""
  splits = sources.folder_splits(config)
  if not splits:
    return
  prints = cluster.gather_texts(folder.fingerprint(splits))
  if len(set(prints)) > 1:
    differ = [i for i, p in enumerate(prints) if p != prints[0]]
    raise cluster.ClusterError(
        f'config.data.dataset={config.data.dataset!r}: process(es) {differ[:8]} see other files '
        'than process 0 (names, labels or which files decode): every host must read the same '
        'folder, e.g. gs://BUCKET/... or a mount all hosts share, unchanged during the run.')


def announce(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Prints one line per split and writes SUMMARY_FILE (process 0)."""
  splits = sources.folder_splits(config)
  if not splits:
    return
  for s in splits:
    progress.say(folder.summary_line(config.data.dataset, s))
  path = epath.Path(workdir) / folder.SUMMARY_FILE
  text = json.dumps(folder.summary(config.data.dataset, splits), indent=2)
  cluster.process_0_does(lambda: path.write_text(text) and None, f'writing {path}')
  progress.say(f'Classes, counts and every skipped file with its reason: {path}.')
