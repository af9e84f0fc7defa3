"""simclr_jax.cluster: when a job starts JAX's distributed runtime, and its input errors.

The multi-process behaviour itself is tested with real processes in test_multiprocess.py.
"""

import pytest

from simclr_jax import cluster


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
  for name in (cluster.ENV_COORDINATOR, cluster.ENV_NUM_PROCESSES, cluster.ENV_PROCESS_ID,
               'SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID', 'SLURM_NTASKS_PER_NODE', 'SLURM_TASKS_PER_NODE',
               'SLURM_GPUS_ON_NODE', 'CUDA_VISIBLE_DEVICES', 'JAX_LOCAL_DEVICE_IDS',
               'OMPI_MCA_orte_hnp_uri', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)


def test_plain_machine_is_single_process():
  assert cluster.detected_cluster() is None
  assert cluster.settings() == {}
  assert cluster.initialize().startswith('single process')
  assert cluster.initialize(num_processes=1).startswith('single process')


def test_slurm_is_detected_from_its_environment(monkeypatch):
  for name, value in (('SLURM_JOB_ID', '7'), ('SLURM_STEP_NODELIST', 'node[1-2]'),
                      ('SLURM_NTASKS', '2'), ('SLURM_PROCID', '1'), ('SLURM_LOCALID', '0')):
    monkeypatch.setenv(name, value)
  assert cluster.detected_cluster() == 'SlurmCluster'


def test_flags_and_jax_env_vars_are_read_and_checked(monkeypatch):
  assert cluster.settings('10.0.0.2:1234', 2, 1) == {
      'coordinator_address': '10.0.0.2:1234', 'num_processes': 2, 'process_id': 1}
  monkeypatch.setenv(cluster.ENV_COORDINATOR, 'h:1')
  monkeypatch.setenv(cluster.ENV_NUM_PROCESSES, '4')
  monkeypatch.setenv(cluster.ENV_PROCESS_ID, '3')
  assert cluster.settings() == {'coordinator_address': 'h:1', 'num_processes': 4,
                                'process_id': 3}
  assert cluster.settings(process_id=0)['process_id'] == 0  # A flag beats the variable.


@pytest.mark.parametrize('kwargs,fragment', [
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), '--process_id=2'),
    (dict(coordinator_address='h:1', num_processes=0, process_id=0), '--num_processes=0'),
    (dict(coordinator_address='nohostport', num_processes=2, process_id=0),
     "--coordinator_address='nohostport'"),
    (dict(num_processes=2, process_id=0), '--coordinator_address is missing'),
    (dict(coordinator_address='h:1', num_processes=2), '--process_id is missing'),
])
def test_bad_settings_name_the_flag(kwargs, fragment):
  with pytest.raises(cluster.ClusterError) as e:
    cluster.settings(**kwargs)
  assert fragment in str(e.value)


def test_single_process_skips_collectives(tmp_path):
  assert cluster.all_agree(True) and not cluster.all_agree(False)
  cluster.check_shared_workdir(str(tmp_path))  # One process: nothing to prove, no marker left.
  assert not list(tmp_path.iterdir())


_SLURM = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[1-2]', 'SLURM_PROCID': '0',
          'SLURM_LOCALID': '0'}


@pytest.mark.parametrize('env,expected', [
    # One task in all: a single process that keeps every GPU it sees.
    ({'SLURM_NTASKS': '1', 'SLURM_TASKS_PER_NODE': '1'}, (True, None)),
    # One task on each of 2 nodes: jax.distributed, each process with all its node's GPUs.
    ({'SLURM_NTASKS': '2', 'SLURM_TASKS_PER_NODE': '1(x2)', 'SLURM_GPUS_ON_NODE': '8'},
     (False, list(range(8)))),
    ({'SLURM_NTASKS': '2', 'SLURM_NTASKS_PER_NODE': '1', 'CUDA_VISIBLE_DEVICES': '2,3'},
     (False, [0, 1])),
    # One task per GPU: JAX's own choice (GPU SLURM_LOCALID) is right.
    ({'SLURM_NTASKS': '16', 'SLURM_TASKS_PER_NODE': '8(x2)', 'SLURM_GPUS_ON_NODE': '8'},
     (False, None)),
    # The user's own JAX_LOCAL_DEVICE_IDS wins.
    ({'SLURM_NTASKS': '2', 'SLURM_TASKS_PER_NODE': '1(x2)', 'JAX_LOCAL_DEVICE_IDS': '0'},
     (False, None)),
])
def test_slurm_layout(env, expected):
  assert cluster.slurm_layout(dict(_SLURM, **env)) == expected


def test_slurm_one_task_per_node_without_a_gpu_count_says_what_to_set():
  with pytest.raises(cluster.ClusterError, match='JAX_LOCAL_DEVICE_IDS'):
    cluster.slurm_layout(dict(_SLURM, SLURM_NTASKS='2', SLURM_TASKS_PER_NODE='1(x2)'))


@pytest.mark.parametrize('env,num_processes,started,local_ids', [
    ({'SLURM_NTASKS': '1'}, None, False, None),  # srun -n 1 with configs/gpu_8x.py.
    ({'SLURM_NTASKS': '8', 'SLURM_TASKS_PER_NODE': '8'}, 1, False, None),  # --num_processes=1.
    ({'SLURM_NTASKS': '2', 'SLURM_TASKS_PER_NODE': '1(x2)', 'SLURM_GPUS_ON_NODE': '4'}, None,
     True, [0, 1, 2, 3]),
    ({'SLURM_NTASKS': '16', 'SLURM_TASKS_PER_NODE': '8(x2)'}, None, True, None),
])
def test_initialize_inside_slurm(monkeypatch, env, num_processes, started, local_ids):
  """What main's initialize asks of jax.distributed inside a SLURM step (recorded, not run)."""
  for name, value in dict(_SLURM, **env).items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(cluster.jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(cluster.jax, 'process_count', lambda: 2)
  how = cluster.initialize(num_processes=num_processes)
  assert bool(calls) == started, how
  if started:
    assert calls[0].get('local_device_ids') == local_ids
  else:
    assert how.startswith('single process')
