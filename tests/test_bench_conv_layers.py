"""bench/conv_layers.py times the model's real convolutions, and both sides compute the same."""

import os
import sys

import pytest

from configs import default
from simclr_jax import models
from simclr_jax.plan import flops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import conv_layers  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize('depth,size', [(18, 32), (50, 64)])
def test_recorded_layers_are_the_models_convolutions(depth, size):
  views = 4
  found = conv_layers.record_layers(depth, size, views)
  c = default.get_config()
  c.model.resnet_depth, c.model.width_multiplier, c.data.image_size = depth, 1.0, size
  # Independent count: flax's interceptor over the encoder's nn.Conv calls (simclr_jax.flops).
  convs = [l for l in flops.layers(models.build_model(c, 10).encoder, (size, size, 3))
           if l.kind == 'conv']
  assert sum(l.count for l in found) == len(convs) == {18: 21, 50: 53}[depth]
  assert (sum(l.count * conv_layers.flops(l) for l in found)
          == views * flops.FLOPS_PER_MAC * sum(l.macs for l in convs))
  inputs = [l for l in found if l.is_input]
  assert len(inputs) == 1 and inputs[0].x_shape == (views, size, size, 3)
  assert inputs[0].count == 1


def test_bench_runs_and_both_sides_agree(capsys):
  pytest.importorskip('torch')
  conv_layers.main(['--image_size=16', '--batch=2', '--rounds=1', '--repeats=1'])
  out = capsys.readouterr().out
  assert 'simclr_jax totals' in out and 'PyTorch totals' in out and 'ours / PyTorch time' in out
  r = conv_layers.run(conv_layers.argparse.Namespace(
      depth=18, width=1.0, image_size=8, batch=1, rounds=1, repeats=1, conv_impl='auto',
      threads=0))
  assert r['conv_impl'] == 'matmul_grad'
  for row in r['rows']:
    assert row['max_rel_err'] < 1e-4, row  # Same function (float32 sums in other orders).
    assert row['ours_fwd_ms'] > 0 and row['torch_dw_ms'] > 0
    assert ('ours_dx_ms' in row) == ('(input)' not in row['layer'])
