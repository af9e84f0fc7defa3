"""The plan's printed report: what the compiled step needs per device, against the chip, and
what the run costs in time at the chip's peak and at stated utilisations."""

from simclr_jax.plan import chips
from simclr_jax.plan import collectives

# The paper's speed (100 epochs of R50 at B 4096 on 128 TPU v3 cores in ~1.5 h) as utilisation:
# 31,279 steps x 1.993e14 FLOPs (flops.py) / (5,400 s x 128 x 61.5e12) = 0.147 (test_plan checks).
PAPER_MFU = 0.15
UTILISATIONS = ((1.0, '100% of peak'), (0.40, '40% MFU'), (PAPER_MFU, '15% (paper, TPU v3)'))
MIB = 2 ** 20


def _gflop(flops: float) -> str:
  return f'{flops / 1e9:10.2f}' if flops >= 1e9 else f'{flops / 1e9:10.4f}'


def _duration(seconds: float) -> str:
  if seconds < 1:
    return f'{seconds * 1e3:.1f} ms'
  if seconds < 120:
    return f'{seconds:.1f} s'
  return f'{seconds / 60:.1f} min' if seconds < 7200 else f'{seconds / 3600:.2f} h'


def format_header(config, chip: chips.Chip, chip_key: str, devices: list, topology, num_train: int,
                  data_source: str, config_path: str) -> str:
  """Which config, on what, compiled by which compiler (first line), model and data."""
  m, d, n, b = config.model, config.data, len(devices), config.train.batch_size
  per_device = (f'{b // n} pairs ({2 * b // n} views) per device' if config.mode == 'pretrain'
                else f'{b // n} images per device')
  memory, peak, shared = chip.memory_bytes, chip.peak_flops, ''
  if chip_key == 'cpu':  # Emulated devices share one host: each gets 1/n of its RAM and cores.
    memory, peak, shared = memory // n, peak / n, f' (host shared by {n} devices: 1/{n} each)'
  hosts = len({x.process_index for x in devices})
  if devices[0].platform == 'tpu':
    compiler = (f'TPU compiler (libtpu) for {topology}: {n} {devices[0].device_kind} devices on '
                f'{hosts} host{"s" if hosts > 1 else ""}, each host\'s devices as a pod assigns '
                'them')
  else:
    compiler = (f'XLA:CPU for {n} emulated CPU devices: an ESTIMATE (libtpu cannot target '
                f'{chip_key})' if chip_key != 'cpu' else f'XLA:CPU for {n} emulated CPU devices')
  total_steps = num_train * config.train.epochs // b + 1 if config.train.steps <= 0 else None
  steps_100 = num_train * 100 // b + 1  # optim.total_steps's formula at 100 epochs.
  return '\n'.join([
      f'plan: {config_path} ({config.name}), compiled by {compiler}',
      f'device: {chip_key}: {chip.name}, {memory / 2**30:.2f} GiB, {peak / 1e12:.4g} TFLOP/s bf16 '
      f'peak{shared} [{chip.source}]',
      f'model: ResNet-{m.resnet_depth} x{m.width_multiplier:g} (sk_ratio {m.sk_ratio:g}) '
      f'{m.dtype} at {d.image_size} px{", blocks rematerialised" if m.get("remat") else ""}; '
      f'{config.optim.optimizer}; mode {config.mode}'
      + (f' (fine_tune_after_block {config.fine_tune_after_block})'
         if config.mode == 'finetune' else ''),
      f'data: {d.dataset} {d.train_split!r} {num_train:,} examples ({data_source}); global batch '
      f'{b} = {per_device}; 100 epochs = {steps_100:,} steps'
      + (f'; this config: {total_steps:,} steps' if total_steps not in (None, steps_100) else '')
      + (f'; this config: train.steps={config.train.steps}' if total_steps is None else '')])


def format_plan(config, plan, chip: chips.Chip, chip_key: str, devices: list, topology,
                num_train: int, data_source: str, config_path: str) -> str:
  """The printed report of a step.Plan: header, memory, FLOPs, cost model, collectives, time."""
  b, n = config.train.batch_size, plan.num_devices
  memory, peak = chip.memory_bytes, chip.peak_flops
  if chip_key == 'cpu':
    memory, peak = memory // n, peak / n
  on_tpu = plan.platform == 'tpu'
  total_steps = num_train * config.train.epochs // b + 1 if config.train.steps <= 0 else None
  steps_100 = num_train * 100 // b + 1
  nb, a, av = plan.nbytes, plan.analytic, plan.analytic_valid
  parts = nb['params'] + nb['opt_state'] + nb['other_state'] + nb['batch'] + nb.get('teacher', 0)
  step_fn = {'pretrain': 'steps.train_step',
             'distill': 'distill.make_distill_step\'s step'}.get(config.mode,
                                                                  'linear_eval.train_step')
  per_device_flops = a['total'] / n
  pretrain = config.mode == 'pretrain'
  views = (2 if pretrain else 1) * b // n
  verdict = (f'headroom {1 - nb["total"] / memory:.1%}' if nb['total'] <= memory else
             'OVER the device\'s memory' + ('' if on_tpu else ' by XLA:CPU\'s count (see notes)'))
  lines = [
      format_header(config, chip, chip_key, devices, topology, num_train, data_source,
                    config_path),
      f'compiled: {step_fn} (jit, state donated, '
      f'params replicated, batch sharded over '
      f'\'data\'), the full model at the real per-device batch: nothing scaled; '
      + ('(precompute_features trains the head on features extracted once instead; this is '
         'the image protocol\'s step, precompute_features=False); '
         if config.mode == 'linear_eval' and config.linear_eval.precompute_features else '')
      + f'{plan.num_params:,} parameters (encoder {plan.encoder_params:,}); '
      f'lower {plan.lower_s:.1f} s, compile {plan.compile_s:.1f} s',
      '',
      f'{"memory per device (" + ("TPU" if on_tpu else "XLA:CPU") + " memory_analysis)":58s} '
      f'{"MiB":>10s}',
      f'  {"parameters (float32)":56s} {nb["params"] / MIB:10.1f}',
      f'  {"optimiser state":56s} {nb["opt_state"] / MIB:10.1f}',
      f'  {"BN statistics + step":56s} {nb["other_state"] / MIB:10.1f}',
      f'  {"batch input (uint8 " + ("views" if pretrain else "images") + ", int32 labels)":56s} '
      f'{nb["batch"] / MIB:10.1f}',
      *([f'  {"frozen teacher: parameters + BN statistics (not donated)":56s} '
         f'{nb["teacher"] / MIB:10.1f}'] if nb.get('teacher') else []),
      f'  {"= arguments (argument_size_in_bytes)":56s} {nb["arguments"] / MIB:10.1f}'
      + ('' if nb['arguments'] == parts else
         '  (!= the parts above: padding/layout, or inputs the program never reads)'),
      f'  {"temporaries (temp_size_in_bytes)":56s} {nb["temp"] / MIB:10.1f}',
      f'  {"outputs not aliased to donated inputs":56s} '
      f'{(nb["outputs"] - nb["alias"]) / MIB:10.1f}',
      f'  {"total":56s} {nb["total"] / MIB:10.1f}  = {nb["total"] / memory:.1%} of '
      f'{memory / 2**30:.2f} GiB: {verdict}',
      '',
      f'{"FLOPs per step per device":58s} {"GFLOP":>10s}',
      f'  {"XLA cost_analysis (per device: the partitioned module)":56s} '
      f'{_gflop(plan.xla_flops)}',
      f'  {"analytic, padded taps counted (torchvision convention)":56s} '
      f'{_gflop(per_device_flops)}  XLA/analytic {plan.xla_flops / per_device_flops:.3f}',
      f'  {"analytic, only taps on the input (XLA convention)":56s} '
      f'{_gflop(av["total"] / n)}  XLA/analytic {plan.xla_flops * n / av["total"]:.3f}',
  ]
  if pretrain:
    lines += [
        f'  analytic (padded), global: model 2 FLOP/MAC x (3 x {plan.forward_macs / 1e9:.4g} GMAC '
        f'forward per view, less the first conv\'s and the probe\'s input grads) x 2 views x {b} '
        f'= {a["model"] / 1e9:.6g} GFLOP',
        f'    + NT-Xent 3 x 2 FLOP/MAC x (2N)^2 x d = 24 N^2 d (N={b}, '
        f'd={a["loss"] // (24 * b * b)}) = {a["loss"] / 1e9:.4g} GFLOP; / {n} devices']
  else:
    lines.append(
        f'  analytic (padded), global: 2 FLOP/MAC x {b} images x ({plan.forward_macs / 1e9:.4g} '
        f'GMAC forward, + weight and input gradients of the trained layers'
        + (', + the teacher\'s forward' if config.mode == 'distill' else '') + ') = '
        f'{a["model"] / 1e9:.6g} GFLOP; / {n} devices')
  if on_tpu and plan.optimal_seconds is None:
    lines += ['', f'TPU cost model: bytes accessed per device {plan.bytes_accessed / 2**30:.2f} GiB '
              f'({plan.bytes_accessed / views / MIB:.1f} MiB per view); no step-time estimate '
              'for this chip (libtpu\'s cost model returned none or a negative time)']
  elif on_tpu:
    t = plan.optimal_seconds
    mfu = plan.xla_flops / (t * peak) if t else float('nan')
    lines += [
        '',
        'TPU cost model (cost_analysis; the compiler\'s own estimate of one step, not a '
        'measurement)',
        f'  {"bytes accessed per device":40s} {plan.bytes_accessed / 2**30:10.2f} GiB  '
        f'{plan.bytes_accessed / views / MIB:8.1f} MiB per view',
        f'  {"step time (optimal_seconds)":40s} {_duration(t):>14s}  '
        f'{t / views * 1e6:8.1f} us per view; {b / n / t:.0f} examples/s/device',
        f'  {"MFU it implies (XLA FLOPs / time / peak)":40s} {mfu:14.1%}',
        f'  {"epoch / 100 epochs":40s} {_duration(t * num_train / b):>14s}  '
        f'{_duration(t * steps_100)}' + (f'; this config ({total_steps:,} steps): '
                                         f'{_duration(t * total_steps)}'
                                         if total_steps not in (None, steps_100) else ''),
    ]
  if plan.collectives:
    lines += ['', f'{"collectives per step per device (compiled HLO)":58s} {"count":>6s} '
              f'{"MiB":>9s}']
    for op, (count, nbytes) in sorted(plan.collectives['ops'].items()):
      split = ', '.join(f'{t} {v / MIB:.2f}' for t, v in
                        sorted(plan.collectives['dtypes'].get(op, {}).items()))
      label = f'{collectives.PURPOSES.get(op, "NOT IN THE DESIGN")} ({op})'
      lines.append(f'  {label:56s} {count:6d} {nbytes / MIB:9.2f}  ({split})')
    for op, (count, nbytes) in sorted(plan.collectives['loss_gather'].items()):
      lines.append(f'  {"  of which NT-Xent gather of projections (" + op + ")":56s} {count:6d} '
                   f'{nbytes / MIB:9.2f}')
    lines.append(f'  {"host transfers / callbacks":56s} {plan.collectives["host_transfers"]:6d}')
  lines += [
      '',
      f'time at {peak / 1e12:.4g} TFLOP/s per device ({chip_key} peak), from the analytic '
      'FLOPs (padded), compute only',
      f'  {"utilisation":24s} {"step":>10s} {"examples/s/device":>18s} {"epoch":>10s} '
      f'{"100 epochs":>11s}' + (f' {"this config":>12s}' if total_steps not in (None, steps_100)
                                 else ''),
  ]
  for mfu, label in UTILISATIONS:
    step_s = per_device_flops / (peak * mfu)
    lines.append(
        f'  {label:24s} {_duration(step_s):>10s} {b / n / step_s:18.1f} '
        f'{_duration(step_s * num_train / b):>10s} {_duration(step_s * steps_100):>11s}'
        + (f' {_duration(step_s * total_steps):>12s}' if total_steps not in (None, steps_100)
           else ''))
  if on_tpu:
    lines += ['', 'notes: memory and cost are the TPU compiler\'s for this topology; the cost '
              'model ignores the input', '  pipeline and overlaps nothing it cannot see. Nothing '
              'ran on a TPU.']
  else:
    lines += [
        '',
        'notes: memory is XLA:CPU\'s buffer assignment for this program. XLA:CPU computes bfloat16',
        '  convolutions in float32 and fuses differently from the TPU/GPU compilers, which also',
        '  rematerialise to fit HBM: read it as the CPU compiler\'s estimate, not a measurement on',
        '  the chip. Times assume a compute-bound step at that utilisation; the input pipeline and',
        '  collectives are not modelled.']
  return '\n'.join(lines)
