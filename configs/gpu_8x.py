"""ImageNet R50 on one 8-GPU node (H100 80GB class): the paper's recipe in bf16 at B=4096.

One process drives all 8 GPUs; no cluster set-up is needed on a single machine:
    pip install -e . 'jax[cuda12]==0.10.2'
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m simclr_jax.main --config=configs/gpu_8x.py \
        --config.data.data_dir=/data/tensorflow_datasets --workdir=/data/simclr/r50_100ep
Under SLURM (one process per GPU; see launch/README.md):
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 NODES=1 bash launch/slurm.sh configs/gpu_8x.py \
        /shared/simclr/r50_100ep --config.data.data_dir=/shared/tensorflow_datasets

B=4096 is kept (512 images, 1024 views per GPU) so that the recipe, learning rate and expected
accuracy are the paper's: 64.5% linear-eval top-1 after 100 epochs. Memory is not measured on a
GPU, and libtpu cannot compile for one: the compile-only plan (`python -m simclr_jax.plan
--config=configs/gpu_8x.py`, docs/pods.md) falls back to XLA:CPU, which puts this step at 145 GiB
per GPU (B=2048: 73 GiB). Read that as an upper estimate: for 128 pairs per TPU v3 core XLA:CPU
counts 36.5 GiB where the TPU compiler needs 8.88 GiB (it keeps bf16 convolutions in bf16 and
rematerialises to fit), and a GPU compile keeps bf16 convolutions in bf16 too. So try B=4096 first with the memory
fraction above (JAX pre-allocates 75% of HBM by default). If it runs out of memory, add
--config.model.remat=True (each ResNet block recomputed in the backward pass, same gradients; on
a v3-32 at B=8192 it took the TPU compiler's count from 14.35 to 8.05 GiB per core for a 1.23x
longer cost-model step), or pass --config.train.batch_size=2048 (the learning rate is rescaled
from it; the paper's Fig. 9 shows a small accuracy cost at 100 epochs). Speed is not measured
yet; the host CPUs, which decode and augment every image for all 8 GPUs, may set it before the
GPUs do.
Evaluation (configs/imagenet.py's cadence: 0.4% of the run if the GPUs set the pace, 3.3% if the
host's decoding does) keeps features sharded: per GPU 1,253.8 MiB (1.22 GiB) of train-split
features and at most 1,293.7 MiB (1.26 GiB) for any evaluation function (1,428.4 MiB, 1.39 GiB,
for a kNN over the whole train split), by the plan's count.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.name = 'gpu_8x_r50_100ep'
  config.hardware.chip = 'h100'
  config.hardware.num_devices = 8
  return config
