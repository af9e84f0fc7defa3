"""What a compiled step sends between devices: its collectives, read from the optimised HLO text.

The design says a pretraining step has exactly these: the NT-Xent all-gather of the projections
(losses.nt_xent), the global-BN all-reduces of per-channel sums (forward and backward), and the
all-reduce of gradients and metrics that the partitioner inserts because parameters are
replicated. `summarise` counts the compiled program's collectives by kind and sums their payload
(result bytes) per device and dtype, so the plan can print bytes per step and tests can assert
that nothing else (a host callback, an unexpected all-to-all) crept in.
"""

import collections
import re

OPS = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
          's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'c128': 16}
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s(' + '|'.join(OPS) +
                          r')(-start)?\(')
_SHAPE = re.compile(r'\b(' + '|'.join(_BYTES) + r')\[([\d,]*)\]')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Host round trips a pod step must not contain: Python callbacks and host send/recv.
_HOST = re.compile(r'custom_call_target="[^"]*callback[^"]*"|is_host_transfer=true', re.I)

# What each collective is for in the design. XLA's all-reduce combiner merges the BN-statistics
# and gradient all-reduces into tuples, so they are reported together.
PURPOSES = {'all-gather': 'NT-Xent gather of projections',
            'all-reduce': 'BN statistics, gradients, metrics (+ the gather if lowered so)'}


def _sizes(shape_text: str, op: str, is_start: bool) -> list:
  """[(dtype, bytes)] of the result; of an all-gather-start's (operand, result), the result."""
  sizes = []
  for dtype, dims in _SHAPE.findall(shape_text):
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    sizes.append((dtype, n * _BYTES[dtype]))
  if is_start and op == 'all-gather' and sizes:
    return [max(sizes, key=lambda s: s[1])]
  return sizes


def summarise(hlo_text: str) -> dict:
  """Of the optimised HLO of ONE device's program (compiled.as_text()): {'ops': {op: [count,
  bytes per device]}, 'dtypes': {op: {dtype: bytes}}, 'loss_gather': {op: [count, bytes]} of the
  collectives that implement the loss's all_gather (XLA may lower it as an all-reduce of
  zero-padded blocks: it does on v3:8x8), 'host_transfers': host callbacks and send/recv}."""
  ops = collections.defaultdict(lambda: [0, 0])
  dtypes = collections.defaultdict(collections.Counter)
  loss_gather = collections.defaultdict(lambda: [0, 0])
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shape_text, op, start = m.groups()
    sizes = _sizes(shape_text, op, bool(start))
    ops[op][0] += 1
    ops[op][1] += sum(b for _, b in sizes)
    for dtype, b in sizes:
      dtypes[op][dtype] += b
    name = _OP_NAME.search(line)
    if name and 'all_gather' in name.group(1):
      loss_gather[op][0] += 1
      loss_gather[op][1] += sum(b for _, b in sizes)
  return {'ops': dict(ops), 'dtypes': {k: dict(v) for k, v in dtypes.items()},
          'loss_gather': dict(loss_gather), 'host_transfers': len(_HOST.findall(hlo_text))}
