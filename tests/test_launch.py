"""launch/tpu_pod.sh and launch/slurm.sh in --dry-run, plus the platform configs they launch.

Nobody here has a TPU pod or a SLURM cluster, so these tests check the commands the scripts would
run. gcloud, sbatch, srun, tar and mkdir are replaced on PATH by stubs that record any call: a
dry run that executes anything fails. The remote command of `run` is also executed locally in a
fake home directory, so its shell quoting is checked by a shell, not by reading it.
"""

import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest

from configs import gpu_8x
from configs import tpu_v3_128
from configs import tpu_v3_32
from simclr_jax import validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_POD = ROOT / 'launch' / 'tpu_pod.sh'
SLURM = ROOT / 'launch' / 'slurm.sh'
STUBBED = ('gcloud', 'sbatch', 'srun', 'tar', 'mkdir')
# Settings the scripts read from the environment; the caller's values must not leak in.
SETTINGS = ('TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE', 'PROJECT', 'RUNTIME', 'DRY_RUN', 'NODES',
            'GPUS_PER_NODE', 'PROCESS_PER', 'CPUS_PER_TASK', 'PARTITION', 'ACCOUNT', 'TIME',
            'LOG_DIR', 'PYTHON', 'REMOTE_PYTHON', 'JAX_LOCAL_DEVICE_IDS', 'SIMCLR_MULTIHOST')
V3_128 = {'TPU_NAME': 'simclr-128', 'ZONE': 'europe-west4-a', 'ACCELERATOR_TYPE': 'v3-128'}
V3_32 = {'TPU_NAME': 'simclr-32', 'ZONE': 'us-central1-a', 'ACCELERATOR_TYPE': 'v3-32'}
SLICES = [(V3_32, 'configs/tpu_v3_32.py'), (V3_128, 'configs/tpu_v3_128.py')]
WORKDIR = 'gs://bkt/simclr/r50'


@pytest.fixture
def sandbox(tmp_path):
  """(environment, stub log): stubs first on PATH; the log names every stubbed call made."""
  stubs = tmp_path / 'stubs'
  stubs.mkdir()
  log = tmp_path / 'stub_calls.log'
  for name in STUBBED:
    stub = stubs / name
    stub.write_text('#!/bin/sh\n'
                    'echo "$(basename "$0") $* | JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS '
                    'SIMCLR_MULTIHOST=$SIMCLR_MULTIHOST" >> "$STUB_LOG"\nexit 97\n')
    stub.chmod(0o755)
  env = {k: v for k, v in os.environ.items()
         if k not in SETTINGS and not k.startswith('SLURM_')}
  env.update(PATH=f'{stubs}:{env["PATH"]}', STUB_LOG=str(log), TMPDIR=str(tmp_path))
  return env, log


def run(sandbox, script, *args, env=None, stdin='', dry_run=True, cwd=None):
  """Runs a script under bash in the sandbox; returns (returncode, stdout lines, stderr)."""
  base, log = sandbox
  args = (('--dry-run',) if dry_run else ()) + args
  dry_run = '--dry-run' in args or (env or {}).get('DRY_RUN') == '1'
  proc = subprocess.run(['bash', str(script), *args], env={**base, **(env or {})}, input=stdin,
                        capture_output=True, text=True, timeout=30,
                        cwd=cwd or base['TMPDIR'])
  if dry_run:
    assert not log.exists(), f'a dry run executed: {log.read_text()}'
  return proc.returncode, proc.stdout.splitlines(), proc.stderr


def ok(sandbox, script, *args, **kwargs):
  rc, lines, err = run(sandbox, script, *args, **kwargs)
  assert rc == 0, err
  assert err == '', err
  return [shlex.split(line, comments=True) for line in lines]


def flag(words, name):
  """The value of --name=value or --name value in a command's words (None if absent)."""
  for i, w in enumerate(words):
    if w.startswith(f'--{name}='):
      return w.split('=', 1)[1]
    if w == f'--{name}':
      return words[i + 1]
  return None


# ---- tpu_pod.sh ----

@pytest.mark.parametrize('tpu,config', SLICES)
def test_create_names_the_slice_zone_and_type(sandbox, tpu, config):
  del config
  [cmd] = ok(sandbox, TPU_POD, 'create', env=tpu)
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', tpu['TPU_NAME']]
  assert flag(cmd, 'zone') == tpu['ZONE']
  assert flag(cmd, 'accelerator-type') == tpu['ACCELERATOR_TYPE']
  assert flag(cmd, 'version') == 'tpu-ubuntu2204-base'
  assert flag(cmd, 'project') is None
  [cmd] = ok(sandbox, TPU_POD, 'create', env={**tpu, 'PROJECT': 'my-proj', 'RUNTIME': 'rt-1'})
  assert (flag(cmd, 'project'), flag(cmd, 'version')) == ('my-proj', 'rt-1')


def test_flags_replace_environment_and_dry_run_goes_anywhere(sandbox):
  by_env = ok(sandbox, TPU_POD, 'create', env=V3_128)
  by_flags = ok(sandbox, TPU_POD, 'create', '--tpu-name=simclr-128', '--zone=europe-west4-a',
                '--accelerator-type=v3-128', dry_run=False, env={'DRY_RUN': '1'})
  assert by_env == by_flags
  at_end = ok(sandbox, TPU_POD, 'create', '--dry-run', dry_run=False, env=V3_128)
  assert at_end == by_env


@pytest.mark.parametrize('tpu,config', SLICES)
def test_setup_copies_and_installs_on_all_workers(sandbox, tpu, config):
  del config
  tar, scp, ssh = ok(sandbox, TPU_POD, 'setup', env=tpu)
  assert tar[:3] == ['tar', '-C', str(ROOT)] and '--exclude=./.venv' in tar
  tarball = tar[tar.index('-czf') + 1]
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert scp[5:7] == [tarball, f'{tpu["TPU_NAME"]}:simclr_jax.tgz']
  assert flag(scp, 'worker') == 'all' and flag(scp, 'zone') == tpu['ZONE']
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu['TPU_NAME']]
  assert flag(ssh, 'worker') == 'all'
  remote = flag(ssh, 'command')
  assert 'tar -C ~/simclr_jax -xzf ~/simclr_jax.tgz' in remote
  assert "pip install -q -e ~/simclr_jax 'jax[tpu]==0.10.2'" in remote
  assert 'python3.11 -m venv ~/simclr_venv' in remote  # jax 0.10.2 needs Python >= 3.11.
  assert subprocess.run(['bash', '-n', '-c', remote]).returncode == 0


@pytest.mark.parametrize('tpu,config', SLICES)
def test_run_is_one_ssh_with_the_same_main_command_on_all_workers(sandbox, tpu, config):
  [cmd] = ok(sandbox, TPU_POD, 'run', config, WORKDIR, '--config.data.data_dir=gs://bkt/tfds',
             env=tpu)
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu['TPU_NAME']]
  assert flag(cmd, 'worker') == 'all' and flag(cmd, 'zone') == tpu['ZONE']
  remote = flag(cmd, 'command')
  main = (f'python3 -m simclr_jax.main --config={config} --workdir={WORKDIR} '
          '--config.data.data_dir=gs://bkt/tfds')
  assert remote.count('python3 -m simclr_jax.main') == 1
  assert f'nohup {main} > ~/simclr_logs/simclr-$(hostname).log 2>&1 < /dev/null &' in remote
  assert 'SIMCLR_MULTIHOST' not in remote  # main detects the slice itself (cluster.py).
  assert 'delete' not in remote


def test_run_remote_command_starts_main_with_exact_arguments(sandbox, tmp_path):
  """Runs the printed remote command in a fake home: quoting must survive two shells."""
  odd = "--config.name=r50 \"v1\" it's $HOME"
  [cmd] = ok(sandbox, TPU_POD, 'run', 'configs/tpu_v3_128.py', WORKDIR, odd, env=V3_128)
  home = tmp_path / 'home'
  (home / 'simclr_jax').mkdir(parents=True)
  fake_bin = home / 'simclr_venv' / 'bin'
  fake_bin.mkdir(parents=True)
  argv_file = tmp_path / 'argv'
  (fake_bin / 'activate').write_text(f'PATH={fake_bin}:$PATH\n')
  (fake_bin / 'python3').write_text(
      f'#!/bin/sh\necho "$PWD" > {argv_file}.tmp\n'
      f'printf "%s\\n" "$@" >> {argv_file}.tmp\nmv {argv_file}.tmp {argv_file}\n')
  (fake_bin / 'python3').chmod(0o755)
  env = {'HOME': str(home), 'PATH': os.environ['PATH']}
  proc = subprocess.run(['bash', '-c', flag(cmd, 'command')], env=env, capture_output=True,
                        text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert 'started' in proc.stdout
  deadline = time.time() + 10
  while not argv_file.exists() and time.time() < deadline:
    time.sleep(0.05)
  first, *argv = argv_file.read_text().splitlines()
  assert first == str(home / 'simclr_jax')
  assert argv == ['-m', 'simclr_jax.main', '--config=configs/tpu_v3_128.py',
                  f'--workdir={WORKDIR}', odd]
  hostname = subprocess.run(['hostname'], capture_output=True, text=True).stdout.strip()
  assert (home / 'simclr_logs' / f'simclr-{hostname}.log').exists()


def test_run_single_host_allows_local_workdir_and_skips_distributed(sandbox):
  [cmd] = ok(sandbox, TPU_POD, 'run', 'configs/tpu_v3_32.py', '/tmp/wd',
             env={**V3_32, 'ACCELERATOR_TYPE': 'v3-8'})
  remote = flag(cmd, 'command')
  assert 'python3 -m simclr_jax.main --config=configs/tpu_v3_32.py --workdir=/tmp/wd >' in remote
  assert 'SIMCLR_MULTIHOST' not in remote
  [cmd] = ok(sandbox, TPU_POD, 'run', 'configs/tpu_v3_32.py', '/mnt/nfs/wd',
             '--allow-local-workdir', env=V3_32)
  assert '--workdir=/mnt/nfs/wd' in flag(cmd, 'command')


def test_logs_are_collected_from_every_worker(sandbox):
  mkdir, scp = ok(sandbox, TPU_POD, 'logs', env=V3_128)
  assert mkdir == ['mkdir', '-p', 'tpu_logs/simclr-128']
  assert scp[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse']
  assert scp[6:8] == ['simclr-128:simclr_logs', 'tpu_logs/simclr-128']
  assert flag(scp, 'worker') == 'all'
  _, scp = ok(sandbox, TPU_POD, 'logs', '--log-dir=/tmp/l', env=V3_128)
  assert scp[7] == '/tmp/l'
  [tail] = ok(sandbox, TPU_POD, 'logs', '--follow', env=V3_128)
  assert flag(tail, 'worker') == '0'
  assert flag(tail, 'command') == 'tail -n 100 -F ~/simclr_logs/simclr-$(hostname).log'
  [tail] = ok(sandbox, TPU_POD, 'logs', '--follow', '--worker=3', env=V3_128)
  assert flag(tail, 'worker') == '3'


def test_status_describes_slice_and_asks_every_worker(sandbox):
  describe, ssh = ok(sandbox, TPU_POD, 'status', env=V3_32)
  assert describe[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'simclr-32']
  assert flag(ssh, 'worker') == 'all' and 'pgrep' in flag(ssh, 'command')


def test_delete_only_on_explicit_request(sandbox):
  for args in (['create'], ['setup'], ['run', 'configs/tpu_v3_128.py', WORKDIR], ['logs'],
               ['logs', '--follow'], ['status']):
    for cmd in ok(sandbox, TPU_POD, *args, env=V3_128):
      assert 'delete' not in cmd, (args, cmd)
  expected = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'simclr-128',
              '--zone=europe-west4-a', '--quiet']
  assert ok(sandbox, TPU_POD, 'delete', '--yes', env=V3_128) == [expected]
  rc, lines, err = run(sandbox, TPU_POD, 'delete', env=V3_128, stdin='simclr-128\n')
  assert rc == 0 and [shlex.split(line) for line in lines] == [expected]
  for answer in ('', 'y\n', 'simclr-32\n'):  # No answer, or not the slice's name: refused.
    rc, lines, err = run(sandbox, TPU_POD, 'delete', env=V3_128, stdin=answer)
    assert rc != 0 and lines == []
    prompt, error = err.splitlines()
    assert prompt.startswith("Delete TPU slice 'simclr-128' in europe-west4-a? Type its name")
    assert error.startswith('tpu_pod.sh: error: not deleted: confirmation did not match')


@pytest.mark.parametrize('env,args,message', [
    ({'ZONE': 'z', 'ACCELERATOR_TYPE': 'v3-32'}, ['create'], 'TPU_NAME is not set'),
    ({'TPU_NAME': 'a', 'ACCELERATOR_TYPE': 'v3-32'}, ['create'], 'ZONE is not set'),
    ({'TPU_NAME': 'Bad_Name', 'ZONE': 'z', 'ACCELERATOR_TYPE': 'v3-32'}, ['create'],
     "TPU_NAME='Bad_Name' is not a valid name"),
    ({'TPU_NAME': 'a', 'ZONE': 'z'}, ['create'], 'ACCELERATOR_TYPE is not set'),
    ({**V3_32, 'ACCELERATOR_TYPE': 'v3_32'}, ['create'], 'not of the form vN-M'),
    ({**V3_32, 'ACCELERATOR_TYPE': '3-32'}, ['create'], 'not of the form vN-M'),
    ({**V3_32, 'ACCELERATOR_TYPE': 'v3-'}, ['status'], 'not of the form vN-M'),
    (V3_32, ['run', 'configs/tpu_v3_32.py', '/home/me/wd'], "WORKDIR '/home/me/wd' is not gs://"),
    (V3_128, ['run', 'configs/tpu_v3_128.py', 'wd'], 'v3-128 slice has 16 hosts'),
    (V3_128, ['run', 'configs/nope.py', WORKDIR], "CONFIG 'configs/nope.py' is not a file"),
    (V3_128, ['run', 'configs/tpu_v3_128.py'], 'run needs CONFIG WORKDIR'),
    (V3_128, ['run', 'configs/tpu_v3_128.py', WORKDIR, '--config.train.epochs', '10'],
     'run needs CONFIG WORKDIR'),
    (V3_128, ['launch'], "unknown subcommand 'launch'"),
    (V3_128, ['status', '--zone', 'z'], "write --zone=VALUE (with '=')"),
    (V3_128, ['status', '--config.x=1'], "unknown option '--config.x=1' for status"),
    (V3_128, ['logs', '--follow', '--worker=all'], '--worker=all is not a worker number'),
])
def test_bad_input_fails_with_one_clear_line(sandbox, env, args, message):
  rc, lines, err = run(sandbox, TPU_POD, *args, env=env)
  assert rc != 0 and lines == []
  [line] = err.splitlines()
  assert line.startswith('tpu_pod.sh: error: ') and message in line, line


def test_without_dry_run_the_commands_are_executed(sandbox):
  """The stubs record real calls, so the dry-run checks above can fail."""
  rc, _, _ = run(sandbox, TPU_POD, 'create', env=V3_128, dry_run=False)
  assert rc == 97  # The stub's exit status: set -e stops the script there.
  assert sandbox[1].read_text().startswith(
      'gcloud compute tpus tpu-vm create simclr-128 --zone=europe-west4-a ')


def _docstring_command(path, start):
  """The `start ...` command in a config's docstring, continuation lines joined, and its env."""
  text = (ROOT / path).read_text()
  env = dict(kv.split('=', 1) for m in re.finditer(r'^ *export (.*)$', text, re.M)
             for kv in m.group(1).split())
  block = text[text.index(start):].split('\n')
  words = []
  for line in block:
    words += shlex.split(line.rstrip('\\'))
    if not line.endswith('\\'):
      return env, words


@pytest.mark.parametrize('config', ['configs/tpu_v3_32.py', 'configs/tpu_v3_128.py'])
def test_tpu_config_docstring_command_passes_the_script(sandbox, config):
  env, words = _docstring_command(config, 'launch/tpu_pod.sh run')
  assert words[2] == config
  [cmd] = ok(sandbox, TPU_POD, *words[1:], env=env)
  assert f'python3 -m simclr_jax.main --config={config} --workdir={words[3]} ' in flag(
      cmd, 'command')


# ---- slurm.sh ----

def _sbatch_and_srun(lines):
  sbatch = [c for c in lines if c and c[0] == 'sbatch']
  srun = [c for c in lines if c and c[0] == 'srun']
  exports = dict(c[1].split('=', 1) for c in lines if c and c[0] == 'export')
  return sbatch, srun, exports


@pytest.mark.parametrize('process_per,nodes,gpus,tasks', [
    ('gpu', 2, 8, 8), ('node', 2, 8, 1), ('gpu', 4, 4, 4), ('node', 16, 4, 1)])
def test_slurm_dry_run_tasks_per_node(sandbox, process_per, nodes, gpus, tasks):
  env = {'NODES': str(nodes), 'GPUS_PER_NODE': str(gpus), 'PROCESS_PER': process_per}
  lines = ok(sandbox, SLURM, 'configs/gpu_8x.py', '/shared/w', '--config.train.epochs=1', env=env)
  [sbatch], [srun], exports = _sbatch_and_srun(lines)
  for cmd in (sbatch, srun):
    assert flag(cmd, 'nodes') == str(nodes)
    assert flag(cmd, 'ntasks-per-node') == str(tasks)
    assert flag(cmd, 'gpus-per-node') == str(gpus)
    assert flag(cmd, 'gpus-per-task') is None and flag(cmd, 'gpu-bind') is None
  assert sbatch[-4:] == [str(SLURM), 'configs/gpu_8x.py', '/shared/w', '--config.train.epochs=1']
  assert f'PROCESS_PER={process_per}' in flag(sbatch, 'export').split(',')
  assert flag(sbatch, 'chdir') == str(ROOT)
  i = srun.index('python3')
  assert srun[i:] == ['python3', '-m', 'simclr_jax.main', '--config=configs/gpu_8x.py',
                      '--workdir=/shared/w', '--config.train.epochs=1']
  assert 'SIMCLR_MULTIHOST' not in exports
  if process_per == 'node':  # Otherwise JAX's SLURM detection pins the process to GPU 0.
    assert exports['JAX_LOCAL_DEVICE_IDS'] == ','.join(map(str, range(gpus)))
  else:
    assert 'JAX_LOCAL_DEVICE_IDS' not in exports


def test_slurm_inside_job_runs_srun_with_the_exports(sandbox):
  job = {'SLURM_JOB_ID': '77', 'SLURM_JOB_NUM_NODES': '3', 'PROCESS_PER': 'node'}
  # sbatch --chdir makes the repo root the job's working directory.
  lines = ok(sandbox, SLURM, 'configs/gpu_8x.py', '/shared/w', env=job, cwd=ROOT)
  sbatch, [srun], _ = _sbatch_and_srun(lines)
  assert sbatch == [] and flag(srun, 'nodes') == '3'
  rc, _, _ = run(sandbox, SLURM, 'configs/gpu_8x.py', '/shared/w', env=job, dry_run=False,
                 cwd=ROOT)
  assert rc == 97  # The stub srun ran, with the variables exported to it.
  call = sandbox[1].read_text()
  assert call.startswith('srun --nodes=3 --ntasks-per-node=1 --gpus-per-node=8 --label python3 ')
  assert 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 SIMCLR_MULTIHOST=' in call  # Not set.


def test_slurm_header_defaults_match_the_submit_path(sandbox):
  """sbatch reads #SBATCH lines only before the first command, and they must agree."""
  lines = SLURM.read_text().splitlines()
  first_command = next(i for i, line in enumerate(lines)
                       if line.strip() and not line.startswith('#'))
  header = {}
  for i, line in enumerate(lines):
    if line.startswith('#SBATCH'):
      assert i < first_command, line
      key, value = line.split()[1].lstrip('-').split('=')
      header[key] = value
  [sbatch], _, _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w'))
  for key in ('nodes', 'ntasks-per-node', 'gpus-per-node', 'time', 'job-name'):
    assert header[key] == flag(sbatch, key), key


@pytest.mark.parametrize('env,args,message', [
    ({'PROCESS_PER': 'socket'}, ['configs/gpu_8x.py', '/w'], "PROCESS_PER='socket' must be"),
    ({'NODES': '0'}, ['configs/gpu_8x.py', '/w'], "NODES='0' must be a positive integer"),
    ({'GPUS_PER_NODE': 'all'}, ['configs/gpu_8x.py', '/w'], "GPUS_PER_NODE='all' must be"),
    ({}, ['configs/gpu_8x.py'], 'need CONFIG WORKDIR'),
    ({}, ['configs/none.py', '/w'], "CONFIG 'configs/none.py' is not a file"),
])
def test_slurm_bad_input_fails_with_one_clear_line(sandbox, env, args, message):
  rc, lines, err = run(sandbox, SLURM, *args, env=env)
  assert rc != 0 and lines == []
  [line] = err.splitlines()
  assert line.startswith('slurm.sh: error: ') and message in line, line


def test_gpu_config_docstring_command_passes_the_script(sandbox):
  env, words = _docstring_command('configs/gpu_8x.py', 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 NODES')
  env.update(w.split('=', 1) for w in words[:2])
  assert words[2:4] == ['bash', 'launch/slurm.sh']
  _, [srun], _ = _sbatch_and_srun(ok(sandbox, SLURM, *words[4:], env=env))
  assert flag(srun, 'ntasks-per-node') == '8' and '--config=configs/gpu_8x.py' in srun


# ---- the platform configs ----

@pytest.mark.parametrize('module,chip,num_devices', [
    (gpu_8x, 'h100', 8), (tpu_v3_32, 'tpu_v3', 32), (tpu_v3_128, 'tpu_v3', 128)])
def test_platform_config_hardware_and_validation(module, chip, num_devices):
  config = module.get_config()
  assert (config.hardware.chip, config.hardware.num_devices) == (chip, num_devices)
  assert config.train.batch_size == 4096 and config.model.dtype == 'bfloat16'
  assert config.model.resnet_depth == 50 and config.data.dataset == 'imagenet2012'
  validation.validate(config, num_devices=config.hardware.num_devices)
