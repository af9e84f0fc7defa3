"""cpu/xla_cpu.py: configure() (what the entry points call before JAX starts) turns YNNPACK off
for CPU convolutions (and only for them), unless the user chose otherwise; checked on what XLA
actually compiles, in fresh processes. Importing simclr_jax alone changes nothing."""

import os
import subprocess
import sys

import pytest

from simclr_jax.cpu import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = xla_cpu.KNOWN_JAXLIB[0]

# Compiles a convolution and a matrix product and prints which of them XLA put into YNNPACK.
PROBE = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
before = os.environ.get('XLA_FLAGS')
import simclr_jax  # Importing the package alone must not touch XLA_FLAGS...
from simclr_jax import train, main
assert os.environ.get('XLA_FLAGS') == before, 'import changed XLA_FLAGS'
from simclr_jax.cpu import xla_cpu
running_before = xla_cpu._backends_running()  # The private JAX API it isolates, checked.
xla_cpu.configure()  # ...an entry point's explicit call does.
import jax, jax.numpy as jnp
from jax import lax
conv = jax.jit(lambda x, w: lax.conv_general_dilated(
    x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
dot = jax.jit(lambda a, b: a @ b)
c = conv.lower(jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
d = dot.lower(jnp.ones((256, 256)), jnp.ones((256, 256))).compile().as_text()
print('conv_ynn', '__ynn_fusion' in c)
print('dot_ynn', '__ynn_fusion' in d)
print('flags', os.environ.get('XLA_FLAGS', ''))
print('status', xla_cpu.STATUS)
print('running', running_before, xla_cpu._backends_running())
'''


def _probe(**env_overrides) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', xla_cpu.OPT_OUT)}
  env.update(env_overrides, JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', PROBE, ROOT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  return dict(line.split(' ', 1) for line in res.stdout.strip().splitlines())


def test_decide_respects_user_opt_out_version_and_timing():
  flag = xla_cpu.FLAG
  assert xla_cpu.decide({}, KNOWN, False)[0]
  assert xla_cpu.decide({'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}, KNOWN,
                        False)[0]
  apply, why = xla_cpu.decide({'XLA_FLAGS': f'{flag}='}, KNOWN, False)  # The user's own value.
  assert not apply and 'left as set' in why
  apply, why = xla_cpu.decide({xla_cpu.OPT_OUT: '0'}, KNOWN, False)
  assert not apply and xla_cpu.OPT_OUT in why
  apply, why = xla_cpu.decide({}, (0, 9), False)  # Unknown flags abort XLA: only known jaxlibs.
  assert not apply and '(0, 9)' in why
  apply, why = xla_cpu.decide({}, None, False)
  assert not apply
  apply, why = xla_cpu.decide({}, KNOWN, True)  # Backend already started: too late.
  assert not apply and 'already running' in why


def test_configure_appends_once_and_keeps_other_flags(monkeypatch):
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: KNOWN)
  monkeypatch.setattr(xla_cpu, '_backends_running', lambda: False)
  monkeypatch.setattr(xla_cpu, 'STATUS', xla_cpu.STATUS)  # Restored after the test.
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.configure(env).startswith('Eigen')
  assert 'left as set' in xla_cpu.configure(env)  # A second call sees its own flag.
  assert env['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=2',
                                      f'{xla_cpu.FLAG}={xla_cpu.VALUE}']
  monkeypatch.setattr(xla_cpu, '_backends_running', lambda: True)
  env = {}
  assert 'already running' in xla_cpu.configure(env) and 'XLA_FLAGS' not in env


@pytest.mark.skipif(xla_cpu._jaxlib_version() not in xla_cpu.KNOWN_JAXLIB,  # pylint: disable=protected-access
                    reason='installed jaxlib is not one known to have the flag')
def test_configure_takes_convolutions_out_of_ynnpack_but_not_matmuls():
  on = _probe()
  assert on['running'] == 'False True', on  # xla_cpu's one private JAX call still tells.
  assert on['conv_ynn'] == 'False', on
  assert on['dot_ynn'] == 'True', on  # YNNPACK's matrix products are the fast ones: kept.
  assert f'{xla_cpu.FLAG}={xla_cpu.VALUE}' in on['flags']
  assert on['status'].startswith('Eigen multi-threaded')
  # Control: opted out, this jaxlib puts the convolution into YNNPACK (so the check above can fail).
  off = _probe(**{xla_cpu.OPT_OUT: '0'})
  assert off['conv_ynn'] == 'True', off
  assert xla_cpu.FLAG not in off['flags']
  # A user's own setting wins: everything back to YNNPACK's default set here.
  user = _probe(XLA_FLAGS=f'{xla_cpu.FLAG}=-individual_dot')
  assert user['conv_ynn'] == 'True' and user['dot_ynn'] == 'False', user
  assert 'left as set' in user['status']
