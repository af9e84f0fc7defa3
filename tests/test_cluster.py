"""simclr_jax.cluster: when a job starts JAX's distributed runtime, and its input errors.

The multi-process behaviour itself is tested with real processes in test_multiprocess.py.
"""

import pytest

from simclr_jax import cluster


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
  for name in (cluster.ENV_COORDINATOR, cluster.ENV_NUM_PROCESSES, cluster.ENV_PROCESS_ID,
               'SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID', 'OMPI_MCA_orte_hnp_uri', 'TPU_WORKER_HOSTNAMES'):
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
