"""Several processes, one job: start JAX's distributed runtime, and decisions every host shares.

Every host of a pod or cluster runs the same command. `initialize` starts JAX's distributed
runtime when the job has more than one process: from explicit settings (main's
--coordinator_address / --num_processes / --process_id, or JAX's own JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID), or from a cluster JAX detects itself (Cloud TPU VMs, SLURM,
Open MPI, Kubernetes). A decision that ends or changes the job (stop on a non-finite loss, refuse a
workdir) must be taken by every host at the same step, or the hosts that go on wait forever in the
next collective: `all_agree` reduces a host-local flag over all processes.
"""

import os
import uuid
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


class ClusterError(RuntimeError):
  """The processes of a job cannot work together as configured; the message says what to fix."""


def detected_cluster() -> Optional[str]:
  """Name of the cluster environment JAX's auto-detection would use, or None (a plain machine).

  Asks JAX's own detectors (jax._src.clusters: Open MPI, SLURM, GKE/GCE TPU, Kubernetes); the
  opt-in mpi4py detector is skipped, as jax.distributed.initialize() skips it.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    types = clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # A JAX without this private API: fall back to env vars.
    return 'slurm' if 'SLURM_STEP_NODELIST' in os.environ else (
        'tpu' if 'TPU_WORKER_HOSTNAMES' in os.environ else None)
  for env in types:
    if getattr(env, 'opt_in_only_method', False):
      continue
    try:
      if env.is_env_present():
        return env.__name__
    except Exception:  # pylint: disable=broad-except  # A detector that cannot tell is a no.
      continue
  return None


def settings(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
             process_id: Optional[int] = None) -> dict:
  """The explicit settings from flags, else JAX's environment variables; checked for consistency.

  Returns {} when none is given. Raises ClusterError on a partial or inconsistent set.
  """
  env = os.environ
  addr = coordinator_address or env.get(ENV_COORDINATOR)
  n = num_processes if num_processes is not None else _int_env(ENV_NUM_PROCESSES)
  i = process_id if process_id is not None else _int_env(ENV_PROCESS_ID)
  given = {'coordinator_address': addr, 'num_processes': n, 'process_id': i}
  if all(v is None for v in given.values()):
    return {}
  if n is not None and n < 1:
    raise ClusterError(f'--num_processes={n} is invalid; allowed: an integer >= 1.')
  if n is not None and i is not None and not 0 <= i < n:
    raise ClusterError(f'--process_id={i} is invalid; allowed: 0..{n - 1} '
                       f'(--num_processes={n}).')
  if addr is not None and ':' not in addr:
    raise ClusterError(f'--coordinator_address={addr!r} is invalid; allowed: HOST:PORT of '
                       'process 0, the same on every process, e.g. 10.0.0.2:12355.')
  missing = [k for k, v in given.items() if v is None]
  if missing and n == 1:
    return {'num_processes': 1}  # Explicitly one process: nothing else is needed.
  if missing and detected_cluster() is None:
    raise ClusterError(
        f'--{missing[0]} is missing: outside a cluster that JAX detects (TPU VM, SLURM, Open MPI) '
        'a multi-process run needs --coordinator_address, --num_processes and --process_id '
        f'(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}).')
  return {k: v for k, v in given.items() if v is not None}


def _int_env(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ClusterError(f'{name}={value!r} is invalid; allowed: an integer.') from e


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> str:
  """Starts jax.distributed when this is a multi-process job; returns how it was decided.

  Must run before anything touches a JAX backend. On CPU the cross-process collectives are Gloo.
  """
  explicit = settings(coordinator_address, num_processes, process_id)
  found = detected_cluster()
  if explicit.get('num_processes') == 1 and found is None:
    return 'single process (--num_processes=1)'
  if not explicit and found is None:
    return 'single process (no cluster detected)'
  if jax.config.jax_platforms in ('cpu',) or os.environ.get('JAX_PLATFORMS') == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**explicit)
  how = 'explicit settings' if explicit else f'auto-detected {found}'
  return f'{jax.process_count()} process(es) via {how}'


def all_agree(flag: bool) -> bool:
  """True on every process iff `flag` is True on every process (a collective: call it at the
  same point on all processes). One process alone skips the collective."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32))
  return bool(np.all(flags))


def check_shared_workdir(workdir: str) -> None:
  """With several processes, prove that every process sees process 0's files in `workdir`.

  Process 0 writes a marker with a name it broadcasts; every process looks for it; all agree.
  A local path on a multi-host pod fails here, before any compilation, instead of leaving
  checkpoints that no other host can restore. Raises ClusterError on every process.
  """
  if jax.process_count() == 1:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  token = int(multihost_utils.broadcast_one_to_all(
      np.asarray(uuid.uuid4().int % 2**31, np.int32)))
  marker = epath.Path(workdir) / f'.shared_check_{token}'
  if jax.process_index() == 0:
    marker.write_text('written by process 0')
  multihost_utils.sync_global_devices('simclr_jax shared workdir: marker written')
  seen = np.ravel(multihost_utils.process_allgather(np.asarray([marker.exists()], np.int32)))
  multihost_utils.sync_global_devices('simclr_jax shared workdir: marker read')
  if jax.process_index() == 0:
    marker.unlink(missing_ok=True)
  blind = [i for i, s in enumerate(seen) if not s]
  if blind:
    raise ClusterError(
        f'--workdir={workdir!r} is not shared by all {jax.process_count()} processes (process(es) '
        f'{", ".join(map(str, blind[:8]))}{"..." if len(blind) > 8 else ""} cannot see a file '
        'that process 0 wrote there): use shared storage such as gs://BUCKET/... or a mount '
        'every host sees.')
