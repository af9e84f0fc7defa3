"""The one XLA:CPU setting that CPU runs need, put into XLA_FLAGS before JAX starts its backend.

Why: jaxlib 0.10-0.11 hands every convolution on the CPU to YNNPACK, which runs it on ONE
thread. Turning YNNPACK off for convolutions only
(`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`; its matrix products stay)
sends them to XLA's Eigen convolution, which uses every core: the training step on CPU gets
about twice as fast (docs/performance.md has the measurements). Turning YNNPACK off altogether
is slower: its matrix products are the fast ones.

The flag is an xla_cpu_* option: TPU and GPU computations ignore it. XLA reads XLA_FLAGS once,
when the first JAX computation starts the backend, so `configure()` must run before that: the
entry points (simclr_jax.main, simclr_jax.plan, bench/) call it before importing JAX, and a
notebook calls it in its first cell. Importing simclr_jax changes nothing. It leaves XLA_FLAGS
alone when
- XLA_FLAGS already names the flag (the user's choice wins),
- SIMCLR_JAX_XLA_CPU_FLAGS=0 is set (opt-out),
- the installed jaxlib is outside the versions known to have the flag (an unknown flag in
  XLA_FLAGS aborts the process), or
- JAX's backends are already running (too late). JAX has no public API to ask that:
  _backends_running isolates the private one (tests/test_xla_cpu.py checks it still answers).
`STATUS` says which; the first progress report of a CPU run prints it.
"""

import os
import sys

FLAG = '--xla_cpu_experimental_ynn_fusion_type'
VALUE = '-individual_convolution'
OPT_OUT = 'SIMCLR_JAX_XLA_CPU_FLAGS'
# jaxlib (major, minor) releases that have FLAG and its '-name' syntax: 0.10 (measured here)
# and 0.11 (reported elsewhere with the same flag).
KNOWN_JAXLIB = ((0, 10), (0, 11))

STATUS = 'not configured'


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    parts = metadata.version('jaxlib').split('.')
    return int(parts[0]), int(parts[1])
  except Exception:  # pylint: disable=broad-except
    return None


def _backends_running() -> bool:
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # pylint: disable=broad-except  # Private API moved: assume the worst.
    return True


def decide(environ, jaxlib_version, backends_running: bool) -> tuple[bool, str]:
  """(whether to append FLAG=VALUE to environ['XLA_FLAGS'], why): pure, for tests."""
  flags = environ.get('XLA_FLAGS', '').split()
  if any(f.split('=', 1)[0] == FLAG for f in flags):
    return False, f'{FLAG} left as set in XLA_FLAGS'
  if environ.get(OPT_OUT, '1') == '0':
    return False, f'YNNPACK convolutions kept ({OPT_OUT}=0)'
  if jaxlib_version not in KNOWN_JAXLIB:
    return False, (f'YNNPACK convolutions kept: jaxlib {jaxlib_version} is not one known to '
                   f'have {FLAG}')
  if backends_running:
    return False, ('YNNPACK convolutions kept: JAX was already running when '
                   'xla_cpu.configure() was called (call it first for multi-threaded CPU '
                   'convolutions)')
  return True, 'Eigen multi-threaded convolutions (YNNPACK off for convolutions)'


def configure(environ=None) -> str:
  """Append the flag to XLA_FLAGS where `decide` says so; returns and records why."""
  global STATUS
  environ = os.environ if environ is None else environ
  apply, STATUS = decide(environ, _jaxlib_version(), _backends_running())
  if apply:
    environ['XLA_FLAGS'] = (environ.get('XLA_FLAGS', '') + f' {FLAG}={VALUE}').strip()
  return STATUS
