"""The semi-supervised chain on the embedded set over several seeds: teacher (fine-tuned on 10% of
the labels), self-distilled student, and a smaller student fine-tuned on the 10% only vs the
same smaller student distilled from the teacher on all 4,000 training images.

    python bench/distill_seeds.py --root=/tmp/distill_seeds [--seeds=0,1,2] [--small=0.125]

Every stage is the CLI (python -m simclr_jax.main) with the repository's recipes:
configs/default.py (pretraining, seed 0, run once per width), configs/finetune_10pct.py,
configs/distill.py; the seed (config.seed) changes the fine-tuning / distillation head
initialisation, data order and crops, not the pretraining run. Reruns reuse finished stages
(a workdir with results.json). Prints a table of top-1 on the 1,000 test digits (mean, standard
deviation, min-max over seeds) and writes it to ROOT/summary.json. docs/distillation.md holds
the measured numbers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage(workdir: str, *flags: str) -> dict:
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    t = time.time()
    cmd = [sys.executable, '-m', 'simclr_jax.main', *flags, f'--workdir={workdir}']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
      sys.exit(f'{" ".join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}')
    print(f'{os.path.basename(workdir)}: {time.time() - t:.0f} s', flush=True)
  return json.loads(open(path).read())


def top1(results: dict) -> float:
  if 'linear_probe' in results:  # Pretraining: its linear probe.
    return results['linear_probe']['simclr']['top1']
  return results['top1']


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--root', required=True)
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--small', type=float, default=0.125, help='width of the smaller student')
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  r = lambda *parts: os.path.join(args.root, *parts)
  rows = {k: [] for k in ('teacher', 'self_distilled', 'small_finetuned', 'small_distilled')}
  pre = r('pre')
  stage(pre, '--config=configs/default.py')
  for s in seeds:  # Self-distillation first: its rows are complete if the run is cut short.
    ft = r(f'ft_{s}')
    rows['teacher'].append(top1(stage(ft, '--config=configs/finetune_10pct.py',
                                      f'--config.init_checkpoint={pre}', f'--config.seed={s}')))
    rows['self_distilled'].append(top1(stage(
        r(f'self_{s}'), '--config=configs/distill.py', f'--config.distill.teacher_checkpoint={ft}',
        f'--config.init_checkpoint={pre}', f'--config.seed={s}')))
  small_pre = r('pre_small')
  stage(small_pre, '--config=configs/default.py', f'--config.model.width_multiplier={args.small}')
  for s in seeds:
    rows['small_finetuned'].append(top1(stage(
        r(f'small_ft_{s}'), '--config=configs/finetune_10pct.py',
        f'--config.init_checkpoint={small_pre}', f'--config.seed={s}')))
    rows['small_distilled'].append(top1(stage(
        r(f'small_distill_{s}'), '--config=configs/distill.py',
        f'--config.distill.teacher_checkpoint={r(f"ft_{s}")}',
        f'--config.init_checkpoint={small_pre}', f'--config.seed={s}')))
  summary = {'seeds': seeds, 'small_width': args.small, 'top1': rows}
  print(f'{"model":<18} {"mean":>7} {"std":>7} {"min-max":>15}  per seed')
  for name, v in rows.items():
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    summary[name] = {'mean': statistics.mean(v), 'std': sd, 'min': min(v), 'max': max(v)}
    print(f'{name:<18} {statistics.mean(v):7.4f} {sd:7.4f} {min(v):7.4f}-{max(v):.4f}  '
          f'{" ".join(f"{x:.4f}" for x in v)}')
  gain = [b - a for a, b in zip(rows['small_finetuned'], rows['small_distilled'])]
  self_gain = [b - a for a, b in zip(rows['teacher'], rows['self_distilled'])]
  summary['small_distilled_minus_finetuned'] = gain
  summary['self_distilled_minus_teacher'] = self_gain
  print('small student, distilled - fine-tuned only, per seed:', ' '.join(f'{g:+.4f}' for g in gain))
  print('self-distilled - teacher, per seed:', ' '.join(f'{g:+.4f}' for g in self_gain))
  with open(r('summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)


if __name__ == '__main__':
  main()
