"""Per-device memory of the NT-Xent loss + gradient at the paper's scale, from the compiler.

The paper's setting: global batch 4096 pairs (8192 views) on 128 TPU cores, projections of 128
dims. The full logits matrix [2N, 2N] = 8192 x 8192 float32 is 256 MiB; a device that owns
only its rows needs [2N/128, 2N] = 64 x 8192 x 4 B = 2 MiB per logits block.

This compiles (never runs) loss+grad for z_a, z_b [4096, 128] sharded over a 128-device emulated
CPU mesh, with the explicit row-block version (mesh=mesh) and with whole-array maths that XLA's
partitioner lays out itself (mesh=None), plus a 1-device control, and prints the per-device
temporary bytes that XLA reserves next to those reference sizes.

    python bench/loss_memory.py
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=128').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH = 4096  # pairs (paper)
DIM = 128  # projection dim (paper)
DEVICES = 128  # TPU v3 cores (paper)
TEMPERATURE = 0.1
MIB = 2 ** 20


def compile_stats(mesh_arg, in_sharding):
  def loss(a, b):
    return losses.nt_xent(a, b, TEMPERATURE, True, mesh=mesh_arg)[0]

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  spec = jax.ShapeDtypeStruct((BATCH, DIM), jnp.float32, sharding=in_sharding)
  t0 = time.time()
  compiled = fn.lower(spec, spec).compile()
  seconds = time.time() - t0
  return compiled.memory_analysis(), seconds


def main():
  assert jax.device_count() == DEVICES, jax.device_count()
  mesh = sharding.make_mesh()
  full_logits = (2 * BATCH) ** 2 * 4
  row_block = (2 * BATCH // DEVICES) * (2 * BATCH) * 4
  print(f'NT-Xent loss+grad, z_a/z_b [{BATCH}, {DIM}] float32, {DEVICES} emulated devices '
        f'(jax {jax.__version__}, {jax.devices()[0].platform}); compiled only, not run.')
  print(f'  full 2N x 2N logits ({2 * BATCH} x {2 * BATCH} x 4 B):            '
        f'{full_logits / MIB:10.2f} MiB')
  print(f'  one device\'s row block ({2 * BATCH // DEVICES} x {2 * BATCH} x 4 B):        '
        f'{row_block / MIB:10.2f} MiB')
  print()
  rows = [
      ('mesh=mesh (row blocks + all-gather)', mesh, sharding.batch_sharded(mesh), DEVICES),
      ('mesh=None, sharded inputs (XLA picks)', None, sharding.batch_sharded(mesh), DEVICES),
      ('control: 1 device, whole arrays', None,
       jax.sharding.SingleDeviceSharding(jax.devices()[0]), 1),
  ]
  header = (f'{"variant":40s} {"devices":>7s} {"temp/device":>12s} {"args/device":>12s} '
            f'{"out/device":>11s} {"temp/full":>10s} {"temp/block":>11s} {"compile":>8s}')
  print(header)
  print('-' * len(header))
  results = {}
  for name, mesh_arg, in_sharding, n in rows:
    stats, seconds = compile_stats(mesh_arg, in_sharding)
    temp = stats.temp_size_in_bytes
    results[name] = temp
    print(f'{name:40s} {n:7d} {temp / MIB:9.2f} MiB {stats.argument_size_in_bytes / MIB:8.3f} MiB '
          f'{stats.output_size_in_bytes / MIB:7.3f} MiB {temp / full_logits:10.3f} '
          f'{temp / row_block:11.2f} {seconds:7.1f}s', flush=True)
  print()
  mesh_temp = results[rows[0][0]]
  verdict = 'holds' if mesh_temp < full_logits / 8 else 'DOES NOT hold'
  print(f'With the mesh, each device reserves {mesh_temp / MIB:.2f} MiB of temporaries, '
        f'{mesh_temp / full_logits:.1%} of one full logits matrix: the claim that no device '
        f'holds the full 2N x 2N logits {verdict}.')


if __name__ == '__main__':
  main()
