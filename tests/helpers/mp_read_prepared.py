"""One process of a multi-process read of a prepared (TFRecord) set, as training reads it with
data.cache=False: jax.distributed gives the process index; input_pipeline.training_stream gives
this process's stream (its own file shards). Writes the SHA-256 of every encoded image of the
first `--epochs` epochs (this process's share of each) to --out, one JSON list per epoch.

    python tests/helpers/mp_read_prepared.py --data_dir=D --name=N --split=S --out=F [--epochs=2]
        --coordinator_address=... --num_processes=2 --process_id=I
"""

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  p = argparse.ArgumentParser()
  for name in ('data_dir', 'name', 'split', 'out', 'coordinator_address'):
    p.add_argument(f'--{name}')
  for name in ('epochs', 'num_processes', 'process_id'):
    p.add_argument(f'--{name}', type=int, default=None)
  a = p.parse_args()
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  cluster.initialize(a.coordinator_address, a.num_processes, a.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.data.dataset, config.data.data_dir, config.data.cache = a.name, a.data_dir, False
  config.train.batch_size = 2 * jax.process_count()
  pi, pc = jax.process_index(), jax.process_count()
  files = sources.tfds_builder(config).info.splits[a.split].file_instructions
  n = sum(f.take for i, f in enumerate(files) if i % pc == pi)  # This process's files.
  ds, _ = input_pipeline.training_stream(config, a.split, process_index=pi, process_count=pc,
                                         start_step=0, decode=False)
  it = ds.as_numpy_iterator()
  epochs = [[hashlib.sha256(next(it)[1]['image']).hexdigest() for _ in range(n)]
            for _ in range(a.epochs or 2)]
  with open(a.out, 'w') as f:
    json.dump({'process': pi, 'of': pc, 'epochs': epochs}, f)
  print(f'process {pi} of {pc}: read {n} examples per epoch', flush=True)


if __name__ == '__main__':
  main()
