"""The paper's ImageNet run on a TPU v3-128 pod slice (128 cores, 16 hosts): B=4096, 100 epochs.

Every host runs the same command; launch/tpu_pod.sh starts it on all of them (launch/README.md):
    export TPU_NAME=simclr ZONE=europe-west4-a ACCELERATOR_TYPE=v3-128
    launch/tpu_pod.sh run configs/tpu_v3_128.py gs://BUCKET/simclr/r50_100ep \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
which runs, on every worker:
    python3 -m simclr_jax.main --config=configs/tpu_v3_128.py \
        --workdir=gs://BUCKET/simclr/r50_100ep --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Paper: ~1.5 h for 100 epochs at ~185 images/s per core. Our speed on TPU is not yet measured; the
TPU compiler (the plan) gives 2.81 GiB per core and a cost-model step of 56 ms (29 min for 100
epochs, ignoring the input pipeline).

Evaluation (configs/imagenet.py: the kNN monitor every 10 epochs on a 100k-image bank, the final
probe on the 1.28M train features; about 3.3% of the run at most) keeps features sharded over the
128 cores. Per core, by XLA's memory analysis of the compiled evaluation functions (the plan,
`python -m simclr_jax.plan --config=configs/tpu_v3_128.py`; tests/test_eval_scaling.py asserts
the bounds): train-split features 78.4 MiB, bank 6.3 MiB, validation features and online-probe
logits 4.8 MiB; the largest function needs 117.5 MiB (the probe's training: the 78.4 MiB shard +
31 MiB), or 140.7 MiB for a kNN whose bank is the whole train split. Gathered on every host, the
train features alone would be 10.5 GB.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'tpu_v3_128_r50_100ep'
  config.hardware.chip = 'tpu_v3'
  config.hardware.num_devices = 128
  return config
