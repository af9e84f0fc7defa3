"""The compile-only plan: analytic FLOPs against published counts and XLA's, the memory split,
the chip table, and the command line."""

import os
import subprocess
import sys

import pytest

from configs import imagenet
from configs import test as test_config
from simclr_jax.plan import chips
from simclr_jax.plan import flops
from simclr_jax import models
from simclr_jax.plan import report
from simclr_jax.plan import step
from simclr_jax.plan import train_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORTCUT_64 = 56 * 56 * 64 * 64  # 1x1 conv 64 -> 64 at 56x56: our group-1 projection shortcut.


def _encoder_layers(depth):
  return flops.layers(models.build_encoder(depth), (224, 224, 3))


def test_resnet50_macs_match_torchvision():
  # torchvision's ResNet-50 (4.09 GFLOPs in its MAC convention) also strides on the 3x3 conv and
  # has the same shortcuts; it adds the 2048 x 1000 fc layer that our encoder does not have.
  macs = flops.forward_macs(_encoder_layers(50))
  assert macs == pytest.approx(4.09e9, rel=0.01)
  assert macs + 2048 * 1000 == pytest.approx(4.09e9, rel=0.001)


def test_resnet18_macs_differ_from_torchvision_by_one_shortcut():
  # The official ResNet gives the first block of EVERY group a projection shortcut; torchvision's
  # ResNet-18 has none in group 1 (64 -> 64), and adds a 512 x 1000 fc: 1.814 G ("1.81").
  layers = _encoder_layers(18)
  macs = flops.forward_macs(layers)
  assert macs == pytest.approx(1.82e9, rel=0.01)
  shortcut = [l.macs for l in layers if l.name.startswith('group1_block0/shortcut')]
  assert shortcut == [SHORTCUT_64]
  assert macs - SHORTCUT_64 + 512 * 1000 == pytest.approx(1.81e9, rel=0.005)


def test_only_first_conv_and_probe_skip_input_gradients():
  layers = flops.layers(models.build_model(test_config.get_config(), 10), (16, 16, 3))
  assert [l.name for l in layers if not l.input_grad] == [layers[0].name, 'head_supervised/dense']


def test_paper_speed_implies_paper_mfu():
  # 100 epochs of R50 at B 4096 on 128 TPU v3 cores in ~1.5 h (the paper).
  config = imagenet.get_config()
  steps = 1_281_167 * 100 // 4096 + 1
  layers = flops.layers(models.build_model(config, 1000), (224, 224, 3))
  total = flops.step_flops(layers, 4096, 128)['total'] * steps
  mfu = total / (1.5 * 3600 * 128 * chips.CHIPS['tpu_v3'].peak_flops)
  assert mfu == pytest.approx(report.PAPER_MFU, abs=0.005)


@pytest.fixture(scope='module')
def small_plan():
  """ResNet-18 at 32 px, 8 pairs per device on 8 devices: convolutions dominate the FLOPs."""
  config = test_config.get_config()
  config.model.resnet_depth = 18
  config.model.width_multiplier = 1.0
  config.model.proj_out_dim = 128
  config.data.image_size = 32
  config.train.batch_size = 64
  return step.compile_plan(config, 8, num_train=4000, num_classes=10)


def test_xla_flops_are_per_device_and_match_analytic(small_plan):
  p = small_plan
  # XLA counts only taps that land on the input, plus BN/ReLU/optimiser element-wise work that
  # the analytic count leaves out (1.5% here, 2% for R50 at 224): so at least 1x and at most
  # 1.05x the valid-tap count. A total over 8 devices would be 8x.
  ratio = p.xla_flops * p.num_devices / p.analytic_valid['total']
  assert 1.0 <= ratio <= 1.05
  assert p.analytic['total'] > p.analytic_valid['total']


def test_memory_split(small_plan):
  b = small_plan.nbytes
  assert min(b.values()) >= 0 and b['temp'] > 0 and b['total'] > b['arguments'] > 0
  assert b['params'] == 4 * small_plan.num_params  # float32, replicated: whole on every device.
  # LARS keeps one float32 momentum buffer per parameter, and its schedule an int32 step count.
  assert b['opt_state'] == b['params'] + 4
  assert b['batch'] == 8 * 2 * 32 * 32 * 3 + 8 * 4  # uint8 views + int32 labels per device.
  assert b['arguments'] == b['params'] + b['opt_state'] + b['other_state'] + b['batch']


@pytest.mark.parametrize('mode,after', [('linear_eval', 4), ('finetune', 2)])
def test_supervised_jobs_compile_with_hand_counted_flops(mode, after):
  """linear_eval / finetune compile their own step (linear_eval.train_step on one image per
  example). Hand count: linear_eval = every layer forward + the head's weight gradient; finetune
  -1 = 3x forward less the first conv's input gradient; after block 2 the stem and groups 1-2 run
  forward only (stop_gradient) and the first trained conv has no input gradient."""
  config = test_config.get_config()
  config.mode, config.fine_tune_after_block = mode, after
  config.model.resnet_depth, config.model.width_multiplier = 18, 1.0  # Convolutions dominate.
  config.data.image_size, config.train.batch_size = 32, 64
  p = step.compile_plan(config, 8, num_train=4000, num_classes=10)
  from simclr_jax.models import classifier  # pylint: disable=g-import-not-at-top
  layers = flops.layers(classifier.build_classifier(config, 10), (32, 32, 3))
  fwd = sum(l.macs for l in layers)
  head = [l.macs for l in layers if l.name.startswith('head_supervised')]
  trained = [l for l in layers if l.name.startswith('head_supervised') or (
      mode == 'finetune' and not any(l.name.startswith(f'encoder/{g}') for g in
                                     ('stem', 'group1', 'group2')[:after + 1]))]
  if mode == 'linear_eval':
    macs = fwd + sum(head)
  else:
    macs = fwd + 2 * sum(l.macs for l in trained) - trained[0].macs
  assert p.analytic['total'] == flops.FLOPS_PER_MAC * 64 * macs
  ratio = p.xla_flops * p.num_devices / p.analytic_valid['total']
  assert 0.97 <= ratio <= 1.05, ratio  # XLA: valid taps, + element-wise work.
  b = p.nbytes
  assert b['batch'] == 8 * 32 * 32 * 3 + 8 * 4  # One uint8 image + an int32 label per device.
  if mode == 'linear_eval':  # Momentum only for the head: frozen leaves carry no state.
    assert b['opt_state'] <= 4 * (sum(head) + 10) + 8
  else:
    assert b['opt_state'] > 0


def test_distillation_compiles_the_student_step_and_the_frozen_teachers_forward():
  """Self-distillation (no teacher checkpoint: the student's architecture): the teacher's
  variables are a separate, undonated argument the size of the student's params + BN statistics,
  and the step's FLOPs are fine-tuning's plus one teacher forward pass per image."""
  config = test_config.get_config()
  config.mode, config.fine_tune_after_block = 'distill', -1
  config.data.image_size, config.train.batch_size = 32, 64
  p = step.compile_plan(config, 8, num_train=4000, num_classes=10)
  from simclr_jax.models import classifier  # pylint: disable=g-import-not-at-top
  layers = flops.layers(classifier.build_classifier(config, 10), (32, 32, 3))
  fwd = sum(l.macs for l in layers)
  student = 3 * fwd - layers[0].macs  # Everything trains; the image needs no gradient.
  assert p.analytic['total'] == flops.FLOPS_PER_MAC * 64 * (student + fwd)
  assert 1.0 <= p.xla_flops * 8 / p.analytic_valid['total'] <= 1.15  # + element-wise work.
  b = p.nbytes
  assert b['teacher'] == b['params'] + b['other_state'] - 4  # Less the int32 step counter.


def test_dataset_size_needs_no_data():
  assert train_plan.dataset_size(imagenet.get_config())[:2] == (1_281_167, 1000)


def test_chip_table():
  assert set(chips.KEYS) == {'cpu', 'tpu_v3', 'tpu_v4', 'tpu_v5e', 'tpu_v5p', 'tpu_v6e', 'a100',
                             'h100', 'h200'}
  assert all(c.source.startswith('https://') for c in chips.CHIPS.values())
  assert chips.CHIPS['tpu_v3'].peak_flops * 2 == 123e12  # Two cores (devices) per chip.
  kinds = {'TPU v3': 'tpu_v3', 'TPU v4': 'tpu_v4', 'TPU v5 lite': 'tpu_v5e', 'TPU v5p': 'tpu_v5p',
           'TPU v6 lite': 'tpu_v6e', 'NVIDIA H100 80GB HBM3': 'h100', 'NVIDIA H200': 'h200',
           'NVIDIA A100-SXM4-80GB': 'a100', 'cpu': 'cpu', 'NVIDIA H100 PCIe': None, 'TPU v2': None}
  assert {k: chips.key_for_device_kind(k) for k in kinds} == kinds
  assert chips.get('cpu').peak_flops > 1e9
  with pytest.raises(KeyError):
    chips.get('tpu_v9')


def _run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'simclr_jax.plan', '--config=configs/test.py',
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.mark.slow
def test_cli_prints_the_plan():
  result = _run_cli('--config.hardware.num_devices=8')
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  for text in ('compiled: steps.train_step', 'for 8 emulated CPU devices', 'memory per device',
               'parameters (float32)', 'XLA cost_analysis', '40% MFU', '100 epochs'):
    assert text in out, out


def test_cli_unknown_chip_is_one_error_line():
  result = _run_cli('--chip=tpu_v9')
  assert result.returncode == 2
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: unknown chip'), result.stderr


def test_cli_linear_eval_of_a_missing_run_is_one_error_line(tmp_path):
  """A linear-evaluation plan takes the architecture from init_checkpoint's run, as the job does:
  a directory that is not one is one `error:` line, before anything is compiled."""
  result = _run_cli('--config.mode=linear_eval', f'--config.init_checkpoint={tmp_path}')
  assert result.returncode == 2 and result.stdout == ''
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith('error: config.init_checkpoint='), \
      result.stderr
  assert 'Traceback' not in result.stderr
