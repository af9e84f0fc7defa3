"""Several processes, one job: start JAX's distributed runtime, and decisions every host shares.

Every host of a pod or cluster runs the same command. `initialize` starts JAX's distributed
runtime when the job has more than one process: from explicit settings (main's
--coordinator_address / --num_processes / --process_id, or JAX's own JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID), or from a cluster JAX detects itself (Cloud TPU VMs, SLURM,
Open MPI, Kubernetes). A decision that ends or changes the job (stop on a non-finite loss, refuse a
workdir) must be taken by every host at the same step, or the hosts that go on wait forever in the
next collective: `all_agree` reduces a host-local flag over all processes.
"""

import json
import os
import uuid
from typing import Any, Callable, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


class ClusterError(RuntimeError):
  """The processes of a job cannot work together as configured; the message says what to fix."""


class HostError(ClusterError):
  """Something failed on some host(s); every host raises this with the same one-line message,
  so that all stop together instead of the others waiting in the next collective."""


# Exceptions whose message is already a complete, actionable line (this package writes them so);
# any other exception is reported with what was being done and its type.
_SELF_EXPLAINING = (ValueError, PermissionError, FileNotFoundError, ClusterError)
_MAX_MESSAGE = 1024  # Bytes of an error message shared between hosts.


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


def slurm_layout(environ=None) -> tuple[bool, Optional[list[int]]]:
  """(whether a detected SLURM step is a job of one process, the local device ids a process
  that is alone on its node must own), from the SLURM_* variables; pure, for tests.

  JAX's SLURM detection gives every process the one GPU numbered SLURM_LOCALID, which is right
  for one process per GPU but leaves a lone task (`srun -n 1`, or one task per node) with one
  GPU of its node's eight. A lone task on its node gets all the GPUs it can see instead:
  JAX_LOCAL_DEVICE_IDS if set, else CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE.
  """
  env = os.environ if environ is None else environ
  if env.get('SLURM_NTASKS') == '1':
    return True, None
  per_node = env.get('SLURM_NTASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE', '')
  if per_node.split('(')[0] != '1' or env.get('JAX_LOCAL_DEVICE_IDS'):
    return False, None
  visible = [v for v in env.get('CUDA_VISIBLE_DEVICES', '').split(',') if v.strip()]
  count = len(visible) or int(env.get('SLURM_GPUS_ON_NODE', '0') or 0)
  if not count:
    raise ClusterError(
        'one SLURM task per node, but neither CUDA_VISIBLE_DEVICES nor SLURM_GPUS_ON_NODE says '
        'how many GPUs it owns: export JAX_LOCAL_DEVICE_IDS=0,1,...,N-1 (N = GPUs per node), '
        'or request GPUs with --gpus-per-node.')
  return False, list(range(count))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> str:
  """Starts jax.distributed when this is a multi-process job; returns how it was decided.

  Must run before anything touches a JAX backend. On CPU the cross-process collectives are Gloo.
  `num_processes=1` (or JAX_NUM_PROCESSES=1) always means one process on its own: jax.distributed
  is not started, whatever cluster is detected, and the process uses every device it sees.
  """
  explicit = settings(coordinator_address, num_processes, process_id)
  found = detected_cluster()
  if explicit.get('num_processes') == 1:
    return 'single process (--num_processes=1: jax.distributed not started)'
  if not explicit and found is None:
    return 'single process (no cluster detected)'
  kwargs = dict(explicit)
  if not explicit and found == 'SlurmCluster':
    alone, local_ids = slurm_layout()
    if alone:
      return 'single process (one SLURM task: every device it sees)'
    if local_ids is not None:
      kwargs['local_device_ids'] = local_ids
  if jax.config.jax_platforms in ('cpu',) or os.environ.get('JAX_PLATFORMS') == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  how = 'explicit settings' if explicit else f'auto-detected {found}'
  return f'{jax.process_count()} process(es) via {how}'


def all_agree(flag: bool) -> bool:
  """True on every process iff `flag` is True on every process (a collective: call it at the
  same point on all processes). One process alone skips the collective."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32))
  return bool(np.all(flags))


def _one_line(e: BaseException, what: str) -> str:
  text = ' '.join(str(e).split()) or repr(e)
  if isinstance(e, _SELF_EXPLAINING):
    return text[:_MAX_MESSAGE]
  return f'{what} failed ({type(e).__name__}: {text})'[:_MAX_MESSAGE]


def _processes(ids: Sequence[int]) -> str:
  shown = ', '.join(map(str, ids[:8])) + ('...' if len(ids) > 8 else '')
  return f'process{"es" if len(ids) > 1 else ""} {shown} of {jax.process_count()}'


def gather_texts(text: str) -> list[str]:
  """Every process's `text` (at most _MAX_MESSAGE bytes of it), in process order, on every
  process. A collective: call it at the same point on all processes."""
  if jax.process_count() == 1:
    return [text]
  raw = text.encode('utf-8')[:_MAX_MESSAGE]
  buf = np.zeros((_MAX_MESSAGE + 1,), np.int32)
  buf[0] = len(raw)
  buf[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
  every = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), -1)
  return [bytes(row[1:1 + row[0]].astype(np.uint8)).decode('utf-8', 'replace') for row in every]


def broadcast_json(value: Any) -> Any:
  """Process 0's `value` (anything JSON can write), on every process (a collective)."""
  if jax.process_count() == 1:
    return value
  data = json.dumps(value).encode('utf-8') if jax.process_index() == 0 else b''
  n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int32)))
  size = 1 << max(n - 1, 0).bit_length()  # Powers of two: few shapes, few compilations.
  buf = np.zeros((size,), np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
  return json.loads(bytes(out[:n]).decode('utf-8'))


def process_0_does(fn: Callable[[], Any], what: str) -> Any:
  """Runs `fn` on process 0 only and returns its (JSON-serialisable) result on every process.

  For everything process 0 decides or writes alone (listing checkpoints, writing config.json,
  moving a damaged checkpoint aside): if it fails there, every process raises the same
  HostError, instead of process 0 stopping while the others wait in the next collective. One
  process alone runs `fn` and lets its exceptions through unchanged.
  """
  if jax.process_count() == 1:
    return fn()
  outcome = None
  if jax.process_index() == 0:
    try:
      outcome = {'value': fn()}
    except Exception as e:  # pylint: disable=broad-except  # Shared, then raised everywhere.
      outcome = {'error': _one_line(e, what)}
  outcome = broadcast_json(outcome)
  if 'error' in outcome:
    raise HostError(f'{outcome["error"]} (on {_processes([0])})')
  return outcome['value']


def every_process_does(fn: Callable[[], Any], what: str) -> Any:
  """Runs `fn` on every process; if it fails on any, every process raises the same HostError
  naming the processes it failed on (the first one's message). Returns this process's result.
  One process alone lets `fn`'s exceptions through unchanged."""
  if jax.process_count() == 1:
    return fn()
  try:
    value, error = fn(), ''
  except Exception as e:  # pylint: disable=broad-except  # Shared, then raised everywhere.
    value, error = None, _one_line(e, what)
  errors = gather_texts(error)
  failed = [i for i, m in enumerate(errors) if m]
  if failed:
    raise HostError(f'{errors[failed[0]]} (on {_processes(failed)})')
  return value


def sum_over_processes(values: Sequence[int]) -> list[int]:
  """Element-wise sums of non-negative integers (< 2**60) over all processes (a collective)."""
  if jax.process_count() == 1:
    return [int(v) for v in values]
  v = np.asarray(values, np.int64)
  parts = np.stack([v >> 30, v & (2**30 - 1)]).astype(np.int32)  # int32 survives without x64.
  every = np.asarray(multihost_utils.process_allgather(parts), np.int64)  # [P, 2, len]
  return [int(x) for x in (every[:, 0].sum(0) << 30) + every[:, 1].sum(0)]


def check_shared_workdir(workdir: str) -> None:
  """With several processes, prove that every process sees process 0's files in `workdir`.

  Process 0 writes a marker with a name it broadcasts; every process looks for it; all agree.
  A local path on a multi-host pod fails here, before any compilation, instead of leaving
  checkpoints that no other host can restore; so does a workdir process 0 cannot write (every
  process then stops with process 0's error). Raises ClusterError on every process.
  """
  if jax.process_count() == 1:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  token = broadcast_json(uuid.uuid4().hex)
  marker = epath.Path(workdir) / f'.shared_check_{token}'
  process_0_does(lambda: marker.write_text('written by process 0'), f'writing {marker}')
  seen = np.ravel(multihost_utils.process_allgather(np.asarray([marker.exists()], np.int32)))
  process_0_does(lambda: marker.unlink(missing_ok=True), f'removing {marker}')
  blind = [i for i, s in enumerate(seen) if not s]
  if blind:
    raise ClusterError(
        f'--workdir={workdir!r} is not shared by all {jax.process_count()} processes (process(es) '
        f'{", ".join(map(str, blind[:8]))}{"..." if len(blind) > 8 else ""} cannot see a file '
        'that process 0 wrote there): use shared storage such as gs://BUCKET/... or a mount '
        'every host sees.')
