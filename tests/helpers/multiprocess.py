"""Start a job as several real processes on this machine (JAX's CPU collectives over 127.0.0.1).

Each process gets `devices_per_process` emulated CPU devices and the distributed flags of
simclr_jax.main (--coordinator_address / --num_processes / --process_id). If one process fails or
the time runs out, every process is killed, so a hung collective cannot hang the test suite.
"""

import os
import socket
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env_for(devices: int, extra: Optional[dict] = None) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  env.update(extra or {})
  return env


def launch(args: Callable[[int], Sequence[str]], *, num_processes: int, devices_per_process: int,
           timeout: float = 600, env: Optional[Callable[[int], dict]] = None
           ) -> list[subprocess.CompletedProcess]:
  """Runs `python *args(i)` for i in range(num_processes) at once; returns their results.

  With num_processes > 1 each gets the distributed flags; with 1 it runs alone (no flags).
  """
  port = free_port()
  procs = []
  for i in range(num_processes):
    cmd = [sys.executable, *args(i)]
    if num_processes > 1:
      cmd += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
              f'--process_id={i}']
    procs.append(subprocess.Popen(
        cmd, cwd=ROOT, env=env_for(devices_per_process, env(i) if env else None),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  deadline = time.time() + timeout
  results = [None] * num_processes
  try:
    for i, p in enumerate(procs):
      out, err = p.communicate(timeout=max(deadline - time.time(), 1))
      results[i] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
      if p.returncode != 0:  # The others may wait for it forever in a collective.
        deadline = min(deadline, time.time() + 30)
  finally:
    for i, p in enumerate(procs):
      if p.poll() is None:
        p.kill()
        out, err = p.communicate()
        results[i] = subprocess.CompletedProcess(p.args, -9, out, err + '\n[killed by the test]')
  return results


def describe(results: list[subprocess.CompletedProcess]) -> str:
  """The tail of every process's output, for assertion messages."""
  return '\n'.join(f'--- process {i} (exit {r.returncode}) ---\n{r.stdout[-3000:]}\n'
                   f'{r.stderr[-3000:]}' for i, r in enumerate(results) if r is not None)


def checkpoint_arrays(workdir: str, step: int) -> dict:
  """{path: numpy array} of a checkpoint's params, BN statistics, optimiser state and step, read
  on the host whatever device layout wrote it."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  ckptr = ocp.PyTreeCheckpointer()
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      ckptr.metadata(path).item_metadata)
  tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(
      {n: tree[n] for n in ('params', 'batch_stats', 'opt_state', 'step')})}
