"""What one JAX device of each accelerator offers: memory and dense bf16 peak FLOP/s.

Used by the compile-only plan (simclr_jax/plan/train_plan.py) to put XLA's per-device figures against the
hardware, and meant for MFU in progress lines. Every entry is per JAX DEVICE: a TPU v3 chip has
two TensorCores that JAX sees as two devices, so its entry is half the chip; from v4 on, a TPU
chip is one device (v4 and v5p by megacore). GPU peaks are dense (NVIDIA's datasheets print the
2:4-sparsity figure, twice the dense one, with a footnote).

Units are the source's: GiB where the page says GiB, GB (1e9 bytes, the smaller reading) where it
says GB. Pages change; re-check before spending money on a number marked "uncertain".
"""

import dataclasses
import functools
import os
import time
from typing import Optional

GIB = 2 ** 30
GB = 10 ** 9
TERA = 10 ** 12


@dataclasses.dataclass(frozen=True)
class Chip:
  """One JAX device: `memory_bytes` of HBM (host RAM for 'cpu'), `peak_flops` dense bf16 FLOP/s
  (float32 measured here for 'cpu')."""
  name: str
  memory_bytes: int
  peak_flops: float
  source: str


CHIPS = {
    # https://cloud.google.com/tpu/docs/v3 : "Peak compute per chip 123 teraflops (bf16)",
    # "HBM2 capacity 32 GiB", "Each v3 TPU chip contains two TensorCores" -> per core (device)
    # 16 GiB and 61.5 TFLOP/s.
    'tpu_v3': Chip('TPU v3 core', 16 * GIB, 61.5 * TERA, 'https://cloud.google.com/tpu/docs/v3'),
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOP/s bf16 and 32 GiB per chip; the two
    # TensorCores form one megacore device.
    'tpu_v4': Chip('TPU v4 chip', 32 * GIB, 275 * TERA, 'https://cloud.google.com/tpu/docs/v4'),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOP/s bf16, "16 GB" HBM2 per chip (one
    # TensorCore). GB vs GiB uncertain: the page writes GB.
    'tpu_v5e': Chip('TPU v5e chip', 16 * GB, 197 * TERA, 'https://cloud.google.com/tpu/docs/v5e'),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOP/s bf16, "95GB" HBM2e per chip (megacore
    # device). GB vs GiB uncertain: the page writes GB.
    'tpu_v5p': Chip('TPU v5p chip', 95 * GB, 459 * TERA, 'https://cloud.google.com/tpu/docs/v5p'),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOP/s bf16, "32 GB" HBM per chip (one
    # TensorCore). GB vs GiB uncertain: the page writes GB.
    'tpu_v6e': Chip('TPU v6e chip', 32 * GB, 918 * TERA, 'https://cloud.google.com/tpu/docs/v6e'),
    # NVIDIA A100 datasheet (https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/
    # pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BFLOAT16 Tensor Core 312 TFLOPS
    # (624 with sparsity), A100 80GB: 80 GB HBM2e.
    'a100': Chip('NVIDIA A100 80GB', 80 * GB, 312 * TERA,
                 'https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/'
                 'nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf'),
    # NVIDIA H100 datasheet / product page (https://www.nvidia.com/en-us/data-center/h100/):
    # H100 SXM BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989 dense; 80 GB HBM3.
    # URL from memory (not browsed here); figures match NVIDIA's Hopper whitepaper table.
    'h100': Chip('NVIDIA H100 SXM', 80 * GB, 989 * TERA,
                 'https://www.nvidia.com/en-us/data-center/h100/'),
    # NVIDIA H200 product page / datasheet (https://www.nvidia.com/en-us/data-center/h200/):
    # H200 SXM BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989 dense; 141 GB HBM3e.
    # URL from memory (not browsed here). The H200 NVL (PCIe) part has a lower peak.
    'h200': Chip('NVIDIA H200 SXM', 141 * GB, 989 * TERA,
                 'https://www.nvidia.com/en-us/data-center/h200/'),
}
KEYS = ('cpu',) + tuple(CHIPS)


def host_memory_bytes() -> int:
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


@functools.lru_cache(maxsize=None)
def measure_cpu_peak_flops(n: int = 2048, repeats: int = 3) -> float:
  """Best float32 FLOP/s of a jitted [n, n] @ [n, n] on the first CPU device (all host cores).

  Measured, not looked up: CPUs differ too much to tabulate, and a matmul is the ceiling that
  convolutions approach. Cached: measured once per process.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  device = jax.devices('cpu')[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def get(key: str) -> Chip:
  """The entry for `key` (one of KEYS); 'cpu' is the whole host, measured on first use."""
  if key == 'cpu':
    return Chip('CPU host (float32 matmul, measured)', host_memory_bytes(),
                measure_cpu_peak_flops(), 'measured by chips.measure_cpu_peak_flops')
  if key not in CHIPS:
    raise KeyError(f'unknown chip {key!r}; allowed: {list(KEYS)}')
  return CHIPS[key]


def key_for_device_kind(device_kind: str) -> Optional[str]:
  """`jax.devices()[0].device_kind` -> a key of this table, or None if we do not know it.

  Variants with other memory or peak (A100 40GB, H100 PCIe/NVL, H200 NVL) map to None rather
  than to a wrong entry. 'TPU v5' is how some JAX versions name v5p (uncertain; v5e is 'lite').
  """
  kind = device_kind.strip().lower()
  if kind == 'cpu':
    return 'cpu'
  tpus = {'tpu v3': 'tpu_v3', 'tpu v4': 'tpu_v4', 'tpu v5 lite': 'tpu_v5e', 'tpu v5e': 'tpu_v5e',
          'tpu v5p': 'tpu_v5p', 'tpu v5': 'tpu_v5p', 'tpu v6 lite': 'tpu_v6e', 'tpu v6e': 'tpu_v6e'}
  if kind in tpus:
    return tpus[kind]
  if 'a100' in kind:  # SXM4 and PCIe 80GB share the 312 TFLOP/s peak.
    return 'a100' if '80gb' in kind else None
  if 'nvl' in kind or 'pcie' in kind:
    return None
  if 'h100' in kind:
    return 'h100'
  if 'h200' in kind:
    return 'h200'
  return None
