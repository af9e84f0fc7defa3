"""launch/tpu_pod.sh and launch/slurm.sh in --dry-run, plus the platform configs they launch.

Nobody here has a TPU pod or a SLURM cluster, so these tests check the commands the scripts would
run. gcloud, sbatch, srun, tar and mkdir are replaced on PATH by stubs that record any call: a
dry run that executes anything fails. The remote commands of `run` and `stop` are also executed
locally in a fake home directory, `stop` against a real stand-in process, so their shell quoting
and process matching are checked by a shell, not by reading them.

There is no bash older than 4.4 here, so bash 3.2/4.2 compatibility is checked statically (every
array expansion guarded, no bash 4 features), plus quoting under BASH_COMPAT=32/42.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import textwrap
import time

import pytest

from configs import gpu_8x
from configs import tpu_v3_128
from configs import tpu_v3_32
from simclr_jax import validation

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_POD = ROOT / 'launch' / 'tpu_pod.sh'
SLURM = ROOT / 'launch' / 'slurm.sh'
COMMON = ROOT / 'launch' / 'common.sh'
SCRIPTS = (TPU_POD, SLURM, COMMON)
STUBBED = ('gcloud', 'sbatch', 'srun', 'tar', 'mkdir')
# Settings the scripts read from the environment; the caller's values must not leak in.
SETTINGS = ('TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE', 'PROJECT', 'RUNTIME', 'DRY_RUN', 'NODES',
            'GPUS_PER_NODE', 'PROCESS_PER', 'CPUS_PER_TASK', 'PARTITION', 'ACCOUNT', 'TIME',
            'LOG_DIR', 'PYTHON', 'REMOTE_PYTHON', 'JAX_LOCAL_DEVICE_IDS', 'SIMCLR_MULTIHOST',
            'STOP_TIMEOUT', 'BASH_COMPAT')
V3_128 = {'TPU_NAME': 'simclr-128', 'ZONE': 'europe-west4-a', 'ACCELERATOR_TYPE': 'v3-128'}
V3_32 = {'TPU_NAME': 'simclr-32', 'ZONE': 'us-central1-a', 'ACCELERATOR_TYPE': 'v3-32'}
SLICES = [(V3_32, 'configs/tpu_v3_32.py'), (V3_128, 'configs/tpu_v3_128.py')]
WORKDIR = 'gs://bkt/simclr/r50'
TPU_SUBCOMMANDS = (['create'], ['setup'], ['run', 'configs/tpu_v3_128.py', WORKDIR], ['logs'],
                   ['logs', '--follow'], ['status'], ['stop'], ['stop', '--force'],
                   ['delete', '--yes'])
SEPARATOR = re.compile(r'==== simclr_jax\.main started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ====')


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
  log = '~/simclr_logs/simclr-$(hostname).log'
  # Appended, after a dated line, so that a rerun keeps the previous attempt's output.
  assert f'nohup {main} >> {log} 2>&1 < /dev/null &' in remote
  assert f'echo "==== simclr_jax.main started $(date -u +%Y-%m-%dT%H:%M:%SZ) ====" >> {log}; ' in (
      remote)
  assert 'SIMCLR_MULTIHOST' not in remote  # main detects the slice itself (cluster.py).
  assert 'delete' not in remote


def _own_group_tools(tmp_path):
  """A PATH folder whose pgrep and pkill see only their caller's process group.

  The remote commands find simclr_jax.main by command line among all of a worker's processes.
  Here they must not see, or signal, anything the test did not start: another test run on this
  machine may have its own stand-in process, which would make `run` refuse to start.
  """
  tools = tmp_path / 'own_group_tools'
  if not tools.exists():
    tools.mkdir()
    for name in ('pgrep', 'pkill'):
      # Process group 0 means the calling process's own group (procps' pgrep/pkill).
      (tools / name).write_text(f'#!/bin/sh\nexec {shutil.which(name)} -g 0 "$@"\n')
      (tools / name).chmod(0o755)
  return tools


def _remote(command, tmp_path, home, process_group=0, timeout=60):
  """Runs a printed remote command under bash as a worker would, in the fake `home`.

  pgrep/pkill see only `process_group` (0: a new group of the command's own), which the command
  joins.
  """
  env = {'HOME': str(home), 'PATH': f'{_own_group_tools(tmp_path)}:{os.environ["PATH"]}'}
  return subprocess.run(['bash', '-c', command], env=env, capture_output=True, text=True,
                        timeout=timeout, process_group=process_group)


def _fake_worker_home(tmp_path, python3_script):
  """A worker's home with the code folder and a venv whose python3 is `python3_script` (sh)."""
  home = tmp_path / 'home'
  (home / 'simclr_jax').mkdir(parents=True)
  fake_bin = home / 'simclr_venv' / 'bin'
  fake_bin.mkdir(parents=True)
  (fake_bin / 'activate').write_text(f'PATH={fake_bin}:$PATH\n')
  (fake_bin / 'python3').write_text('#!/bin/sh\n' + python3_script)
  (fake_bin / 'python3').chmod(0o755)
  return home


def _wait_for(condition, what, timeout=60):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, f'timed out waiting for {what}'
    time.sleep(0.05)


def _hostname():
  return subprocess.run(['hostname'], capture_output=True, text=True,
                        check=True).stdout.strip()


def test_run_remote_command_starts_main_with_exact_arguments(sandbox, tmp_path):
  """Runs the printed remote command in a fake home: quoting must survive two shells."""
  odd = "--config.name=r50 \"v1\" it's $HOME"
  [cmd] = ok(sandbox, TPU_POD, 'run', 'configs/tpu_v3_128.py', WORKDIR, odd, env=V3_128)
  argv_file = tmp_path / 'argv'
  home = _fake_worker_home(
      tmp_path, f'echo "$PWD" > {argv_file}.tmp\n'
      f'printf "%s\\n" "$@" >> {argv_file}.tmp\nmv {argv_file}.tmp {argv_file}\n')
  proc = _remote(flag(cmd, 'command'), tmp_path, home)
  assert proc.returncode == 0, proc.stderr
  assert 'started' in proc.stdout
  _wait_for(argv_file.exists, 'the fake python3 to run')
  first, *argv = argv_file.read_text().splitlines()
  assert first == str(home / 'simclr_jax')
  assert argv == ['-m', 'simclr_jax.main', '--config=configs/tpu_v3_128.py',
                  f'--workdir={WORKDIR}', odd]
  assert (home / 'simclr_logs' / f'simclr-{_hostname()}.log').exists()


def test_run_twice_keeps_the_first_attempts_log(sandbox, tmp_path):
  """A rerun appends to the worker's log after a dated line, so the crash before it stays."""
  done = tmp_path / 'attempts_done'
  home = _fake_worker_home(
      tmp_path, 'echo "attempt $5: training"\necho "attempt $5: Traceback (crash)" >&2\n'
      f'echo "$5" >> {done}\nexit 1\n')
  for attempt in ('1', '2'):
    [cmd] = ok(sandbox, TPU_POD, 'run', 'configs/tpu_v3_128.py', WORKDIR, '--', attempt,
               env=V3_128)
    proc = _remote(flag(cmd, 'command'), tmp_path, home)
    assert proc.returncode == 0, proc.stderr
    _wait_for(lambda a=attempt: done.exists() and len(done.read_text().split()) == int(a),
              f'attempt {attempt} to finish')
  lines = (home / 'simclr_logs' / f'simclr-{_hostname()}.log').read_text().splitlines()
  assert len(lines) == 6, lines
  for i, attempt in ((0, '1'), (3, '2')):
    assert SEPARATOR.fullmatch(lines[i]), lines[i]
    assert sorted(lines[i + 1:i + 3]) == [f'attempt {attempt}: Traceback (crash)',
                                          f'attempt {attempt}: training']


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


@pytest.mark.parametrize('args,signals,timeout', [
    ([], ['-TERM', '-KILL'], '120'), (['--stop-timeout=7'], ['-TERM', '-KILL'], '7'),
    (['--force'], ['-KILL'], None)])
def test_stop_is_one_ssh_that_signals_main_on_every_worker(sandbox, args, signals, timeout):
  [ssh] = ok(sandbox, TPU_POD, 'stop', *args, env={**V3_128, 'PROJECT': 'p'})
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'simclr-128']
  assert flag(ssh, 'worker') == 'all' and flag(ssh, 'zone') == 'europe-west4-a'
  assert flag(ssh, 'project') == 'p'
  remote = flag(ssh, 'command')
  assert subprocess.run(['bash', '-n', '-c', remote]).returncode == 0
  # The same pattern as run and status: the training process, not the shell running this.
  assert "p='^python3 -m simclr_jax[.]main'" in remote
  assert re.findall(r'pkill (-[A-Z]+) -f "\$p"', remote) == signals
  if timeout:
    assert f'if gone_within {timeout}; then echo "$h: stopped after $t s"' in remote
    assert f"what='killed after {timeout} s'" in remote
  assert 'was not running' in remote and 'delete' not in remote


def _stand_in_main(tmp_path, on_sigterm):
  """Starts a real `python3 -m simclr_jax.main` in a process group of its own; returns it.

  The module is a stand-in in a temporary folder (the current directory comes first on the
  module path), so its command line is the one the scripts look for. On SIGTERM it exits 143
  (as simclr_jax.main does after its checkpoint) or, with on_sigterm='ignore', keeps running.
  """
  code = tmp_path / 'stand_in'
  (code / 'simclr_jax').mkdir(parents=True)
  (code / 'simclr_jax' / '__init__.py').write_text('')
  ready = tmp_path / 'stand_in_ready'
  (code / 'simclr_jax' / 'main.py').write_text(textwrap.dedent(f'''\
      import pathlib, signal, sys
      if {on_sigterm == 'ignore'}:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
      else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
      pathlib.Path({str(ready)!r}).write_text('')
      while True:
        signal.pause()
      '''))
  proc = subprocess.Popen(['python3', '-m', 'simclr_jax.main', '--config=stand-in'], cwd=code,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          env={'PATH': os.environ['PATH']}, process_group=0)
  try:
    _wait_for(lambda: ready.exists() or proc.poll() is not None, 'the stand-in to start')
    assert proc.poll() is None, f'the stand-in exited with {proc.returncode}'
    cmdline = pathlib.Path(f'/proc/{proc.pid}/cmdline')
    if cmdline.exists():  # Linux: what pgrep -f matches against.
      assert cmdline.read_bytes().startswith(b'python3\0-m\0simclr_jax.main\0')
  except BaseException:
    proc.kill()
    proc.wait()
    raise
  return proc


@pytest.mark.parametrize('args,env,on_sigterm,report,exit_status', [
    ([], {}, 'exit', r'stopped after \d+ s', 143),
    ([], {'STOP_TIMEOUT': '1'}, 'ignore', r'killed after 1 s', -9),
    (['--force'], {}, 'exit', r'killed', -9)])
def test_stop_remote_command_ends_a_real_main_process(sandbox, tmp_path, args, env, on_sigterm,
                                                      report, exit_status):
  """The remote command, run here in the stand-in's process group, ends it and not itself."""
  [ssh] = ok(sandbox, TPU_POD, 'stop', *args, env={**V3_128, **env})
  main = _stand_in_main(tmp_path, on_sigterm)
  try:
    # If the pattern matched the stop command's own shell (same group), pkill would end it too.
    proc = _remote(flag(ssh, 'command'), tmp_path, tmp_path, process_group=main.pid,
                   timeout=300)
    assert main.wait(timeout=60) == exit_status
  finally:
    if main.poll() is None:
      main.kill()
      main.wait()
  assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
  assert re.fullmatch(f'{re.escape(_hostname())}: {report}\n', proc.stdout), proc.stdout
  assert proc.stderr == ''
  proc = _remote(flag(ssh, 'command'), tmp_path, tmp_path, process_group=0)
  assert (proc.returncode, proc.stdout) == (0, f'{_hostname()}: was not running\n')


def test_delete_only_on_explicit_request(sandbox):
  for args in TPU_SUBCOMMANDS[:-1]:
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
    ({**V3_128, 'STOP_TIMEOUT': '2m'}, ['stop'], "STOP_TIMEOUT='2m' is not a whole number"),
    (V3_128, ['stop', '--stop-timeout=-1'], "STOP_TIMEOUT='-1' is not a whole number"),
    (V3_128, ['stop', '--stop-timeout', '5'], "write --stop-timeout=VALUE (with '=')"),
    (V3_128, ['delete', '--force'], '--force is an option of stop only'),
    (V3_128, ['stop', 'now'], "stop takes no arguments, got 'now'"),
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
  job = {'SLURM_JOB_ID': '77', 'SLURM_JOB_NUM_NODES': '3', 'PROCESS_PER': 'node',
         'SLURM_CPUS_ON_NODE': '48'}
  # sbatch --chdir makes the repo root the job's working directory.
  lines = ok(sandbox, SLURM, 'configs/gpu_8x.py', '/shared/w', env=job, cwd=ROOT)
  sbatch, [srun], _ = _sbatch_and_srun(lines)
  assert sbatch == [] and flag(srun, 'nodes') == '3'
  rc, _, _ = run(sandbox, SLURM, 'configs/gpu_8x.py', '/shared/w', env=job, dry_run=False,
                 cwd=ROOT)
  assert rc == 97  # The stub srun ran, with the variables exported to it.
  call = sandbox[1].read_text()
  assert call.startswith('srun --nodes=3 --ntasks-per-node=1 --gpus-per-node=8 '
                         '--cpus-per-task=48 --label python3 ')
  assert 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 SIMCLR_MULTIHOST=' in call  # Not set.


def test_slurm_one_task_on_one_node_sees_all_its_gpus(sandbox):
  """NODES=1 PROCESS_PER=node: one SLURM task, which must not be pinned to GPU 0."""
  job = {'SLURM_JOB_ID': '78', 'NODES': '1', 'PROCESS_PER': 'node', 'SLURM_CPUS_ON_NODE': '64'}
  lines = ok(sandbox, SLURM, 'configs/gpu_8x.py', '/shared/w', env=job, cwd=ROOT)
  sbatch, [srun], exports = _sbatch_and_srun(lines)
  assert sbatch == []
  assert exports == {'JAX_LOCAL_DEVICE_IDS': '0,1,2,3,4,5,6,7'}
  assert lines.index(['export', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7']) < lines.index(srun)
  assert [flag(srun, k) for k in ('nodes', 'ntasks-per-node', 'gpus-per-node')] == ['1', '1', '8']


@pytest.mark.parametrize('process_per,cpus_on_node,expected', [
    ('gpu', '64', '8'), ('node', '64', '64'), ('gpu', '4', '1'), ('gpu', '100', '12')])
def test_slurm_cpus_per_task_defaults_to_the_nodes_cpus_over_its_tasks(
    sandbox, process_per, cpus_on_node, expected):
  env = {'PROCESS_PER': process_per}
  [sbatch], [srun], _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w', env=env))
  # The job takes whole nodes, so that it has all their CPUs to share among its tasks.
  assert '--exclusive' in sbatch and flag(sbatch, 'cpus-per-task') is None
  tasks = 8 if process_per == 'gpu' else 1
  # Outside the job SLURM_CPUS_ON_NODE is unknown: the dry run prints the expression.
  assert flag(srun, 'cpus-per-task') == f'$((SLURM_CPUS_ON_NODE/{tasks}))'
  job = {**env, 'SLURM_JOB_ID': '79', 'SLURM_JOB_NUM_NODES': '2',
         'SLURM_CPUS_ON_NODE': cpus_on_node}
  _, [srun], _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w', env=job,
                                     cwd=ROOT))
  assert flag(srun, 'cpus-per-task') == expected
  assert flag(srun, 'ntasks-per-node') == str(tasks)


def test_slurm_cpus_per_task_setting_goes_to_sbatch_and_srun(sandbox):
  [sbatch], [srun], _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w',
                                            env={'CPUS_PER_TASK': '6'}))
  assert flag(sbatch, 'cpus-per-task') == flag(srun, 'cpus-per-task') == '6'
  assert '--exclusive' not in sbatch
  # Inside the job: CPUS_PER_TASK as passed on by sbatch, or sbatch --cpus-per-task's variable.
  for setting in ({'CPUS_PER_TASK': '6'}, {'SLURM_CPUS_PER_TASK': '6'}):
    job = {**setting, 'SLURM_JOB_ID': '80', 'SLURM_CPUS_ON_NODE': '64'}
    _, [srun], _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w', env=job,
                                       cwd=ROOT))
    assert flag(srun, 'cpus-per-task') == '6', setting


def test_slurm_job_without_a_cpu_count_warns_and_leaves_cpus_to_the_cluster(sandbox):
  rc, lines, err = run(sandbox, SLURM, 'configs/gpu_8x.py', '/w', env={'SLURM_JOB_ID': '81'},
                       cwd=ROOT)
  assert rc == 0
  [srun] = [shlex.split(line) for line in lines]
  assert srun[0] == 'srun' and flag(srun, 'cpus-per-task') is None
  [line] = err.splitlines()
  assert line.startswith("slurm.sh: warning: SLURM_CPUS_ON_NODE='' is not a CPU count"), line


def test_slurm_header_defaults_match_the_submit_path(sandbox):
  """sbatch reads #SBATCH lines only before the first command, and they must agree."""
  lines = SLURM.read_text().splitlines()
  first_command = next(i for i, line in enumerate(lines)
                       if line.strip() and not line.startswith('#'))
  header = {}
  for i, line in enumerate(lines):
    if line.startswith('#SBATCH'):
      assert i < first_command, line
      key, _, value = line.split()[1].lstrip('-').partition('=')
      header[key] = value
  [sbatch], _, _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w'))
  for key in ('nodes', 'ntasks-per-node', 'gpus-per-node', 'time', 'job-name'):
    assert header[key] == flag(sbatch, key), key
  assert ('exclusive' in header) == ('--exclusive' in sbatch)  # Whole nodes: all their CPUs.
  assert ('cpus-per-task' in header) == (flag(sbatch, 'cpus-per-task') is not None)


@pytest.mark.parametrize('env,args,message', [
    ({'PROCESS_PER': 'socket'}, ['configs/gpu_8x.py', '/w'], "PROCESS_PER='socket' must be"),
    ({'NODES': '0'}, ['configs/gpu_8x.py', '/w'], "NODES='0' must be a positive integer"),
    ({'GPUS_PER_NODE': 'all'}, ['configs/gpu_8x.py', '/w'], "GPUS_PER_NODE='all' must be"),
    ({}, ['configs/gpu_8x.py'], 'need CONFIG WORKDIR'),
    ({}, ['configs/none.py', '/w'], "CONFIG 'configs/none.py' is not a file"),
    ({'CPUS_PER_TASK': '0'}, ['configs/gpu_8x.py', '/w'], "CPUS_PER_TASK='0' must be a positive"),
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


# ---- both scripts: bash 3.2 and 4.2, the shared launch/common.sh ----

# ${a[@]+"${a[@]}"}: expands to nothing, without touching "${a[@]}", when `a` is empty.
_GUARDED = re.compile(r'\$\{(\w+)\[[@*]\]\+"\$\{\1\[[@*]\](?::[0-9]+)?\}"\}')
# "${a[@]}", "${a[*]}", ${!a[@]}, ${a[@]:1}, ...; an operator that tolerates an unset array
# (${a[*]:-none}, ${a[@]+...}) is captured, and ${#a[@]} (a length) does not match.
_ARRAY_EXPANSION = re.compile(r'\$\{!?\w+\[[@*]\](:?[-+])?')


def _unguarded_array_expansions(code):
  """Expansions that stop bash < 4.4 with 'unbound variable' under set -u on an empty array."""
  return [m.group(0) for m in _ARRAY_EXPANSION.finditer(_GUARDED.sub('', code))
          if not m.group(1)]


def _code_lines(path):
  """(number, line) of the lines after `set -u` that are not comments (common.sh: all lines,
  since the scripts source it after their `set -euo pipefail`)."""
  lines = path.read_text().splitlines()
  start = 0
  if path != COMMON:
    start = next(i for i, line in enumerate(lines) if re.match(r'set -[a-z]*u', line)) + 1
  return [(i + 1, line) for i, line in enumerate(lines)
          if i >= start and not line.lstrip().startswith('#')]


@pytest.mark.parametrize('code,bad', [
    ('cmd "${a[@]}" x', ['${a[@]']), ('printf "${a[*]}"', ['${a[*]']),
    ('b=("${a[@]:1}")', ['${a[@]']), ('for k in "${!a[@]}"', ['${!a[@]']),
    ('${a[@]+"${b[@]}"}', ['${b[@]']), ('x ${a[@]+"${a[@]}"} "${c[@]}"', ['${c[@]']),
    ('cmd ${a[@]+"${a[@]}"} ${a[@]+"${a[*]}"}', []), ('(( ${#a[@]} ))', []),
    ('echo "${a[*]:-none}"', []), ('b=(${a[@]+"${a[@]:1}"})', []),
    ('"${BASH_SOURCE[0]}"', []),
])
def test_array_guard_rule_itself(code, bad):
  assert _unguarded_array_expansions(code) == bad


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.name)
def test_scripts_guard_every_array_expansion_for_bash_before_4_4(path):
  """bash 3.2 (macOS) and 4.2 (RHEL 7) stop on an empty "${a[@]}" under set -u."""
  bad = [(n, line) for n, line in _code_lines(path) if _unguarded_array_expansions(line)]
  assert not bad, f'write ${{a[@]+"${{a[@]}}"}} instead: {bad}'


# What bash 3.2 lacks (added in bash 4.0 to 4.4), as they would appear in the scripts.
_BASH4 = {
    r'\bdeclare\s+-[a-zA-Z]*[AnlNu]|\blocal\s+-[a-zA-Z]*[An]': 'associative arrays, namerefs',
    r'\b(mapfile|readarray|coproc)\b': 'bash 4 builtins',
    r'\$\{\w+(\[[^]]*\])?(,,?|\^\^?)': 'case conversion', r'\$\{\w+@[QEPAaKk]\}': '${x@Q}',
    r'\[-[0-9]+\]': 'negative array index',
    r'\$\{\w+(\[[@*]\])?:[\w ]+:\s*\(?-': 'negative length',
    r';;&|;&|\|&|&>>': 'bash 4 operators', r'\bBASHPID\b|\bwait -n\b': 'bash 4 variables',
    r'printf[^|;]*%\(': 'printf %(...)T', r'\bshopt\s+-s\s+(globstar|lastpipe)': 'shopt',
    r'\{\w+\}[<>]': 'automatic file descriptors',
}


def _bash4_features(line):
  return [what for pattern, what in _BASH4.items() if re.search(pattern, line)]


@pytest.mark.parametrize('code,found', [
    ('declare -A m', True), ('local -n ref=x', True), ('mapfile -t a < f', True),
    ('echo "${x,,}"', True), ('echo "${x^^}"', True), ('echo "${a[-1]}"', True),
    ('echo "${x:0:-1}"', True), ("printf '%(%F)T'", True), ('cmd |& tee', True),
    ('cmd &>> log', True), ('exec {fd}> f', True), ('echo "${x@Q}"', True),
    ('NODES="${NODES:-${SLURM_JOB_NUM_NODES:-1}}"', False), ('echo "${a[*]:-none}"', False),
    ("printf '%s\\n' x", False), ('cmd >> log 2>&1 < /dev/null &', False),
])
def test_bash_4_feature_rule_itself(code, found):
  assert bool(_bash4_features(code)) == found, _bash4_features(code)


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.name)
def test_scripts_use_no_bash_4_features(path):
  found = [(n, line, _bash4_features(line)) for n, line in _code_lines(path)
           if _bash4_features(line)]
  assert not found, found


@pytest.mark.parametrize('args', TPU_SUBCOMMANDS, ids=' '.join)
def test_tpu_pod_dry_run_with_empty_optional_arrays(sandbox, args):
  """No PROJECT (project_flag empty) and no simclr_jax.main flags (main_args empty)."""
  assert ok(sandbox, TPU_POD, *args, env=V3_32)


@pytest.mark.parametrize('job', [{}, {'SLURM_JOB_ID': '5', 'SLURM_CPUS_ON_NODE': '16'}],
                         ids=['submit', 'in-job'])
@pytest.mark.parametrize('process_per', ['gpu', 'node'])
def test_slurm_dry_run_with_empty_optional_arrays(sandbox, job, process_per):
  """No CPUS_PER_TASK, PARTITION, ACCOUNT and no overrides (main_args empty)."""
  lines = ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w', env={**job, 'PROCESS_PER': process_per},
             cwd=ROOT)
  _, [srun], _ = _sbatch_and_srun(lines)
  assert srun[-1] == '--workdir=/w'


@pytest.mark.parametrize('compat', ['32', '42'])
def test_printed_commands_paste_under_old_bash_quoting(sandbox, compat):
  """bash <= 4.2 does no quote removal in a "${x//pat/rep}" replacement; BASH_COMPAT mimics it."""
  odd = "--config.name=it's \"x\" $HOME"
  env = {**V3_128, 'BASH_COMPAT': compat}
  [cmd] = ok(sandbox, TPU_POD, 'run', 'configs/tpu_v3_128.py', WORKDIR, odd, env=env)
  assert odd in shlex.split(flag(cmd, 'command'))
  _, [srun], _ = _sbatch_and_srun(ok(sandbox, SLURM, 'configs/gpu_8x.py', '/w', odd,
                                     env={'BASH_COMPAT': compat}))
  assert srun[-1] == odd


def test_scripts_share_their_helpers_from_common_sh():
  common = COMMON.read_text()
  for path in (TPU_POD, SLURM):
    text = path.read_text()
    assert '. "$ROOT/launch/common.sh"' in text, path
    for helper in ('die', 'quote', 'do_cmd', 'usage'):
      assert not re.search(rf'^\s*{helper}\(\)', text, re.M), (path, helper)
      assert re.search(rf'^{helper}\(\)', common, re.M), helper
    assert 'DRY_RUN' not in text.split('set -euo pipefail')[1], path  # Parsed in common.sh.


def test_slurm_job_finds_common_sh_from_its_working_directory(sandbox, tmp_path):
  """Under sbatch the script is a spool copy; --chdir makes the repo root the job's directory."""
  spool = tmp_path / 'spool' / 'job42'
  spool.mkdir(parents=True)
  shutil.copy(SLURM, spool / 'slurm_script')
  job = {'SLURM_JOB_ID': '42', 'SLURM_CPUS_ON_NODE': '16'}
  _, [srun], _ = _sbatch_and_srun(ok(sandbox, spool / 'slurm_script', 'configs/gpu_8x.py', '/w',
                                     env=job, cwd=ROOT))
  assert flag(srun, 'cpus-per-task') == '2'
  rc, lines, err = run(sandbox, spool / 'slurm_script', 'configs/gpu_8x.py', '/w', env=job,
                       cwd=tmp_path)
  assert rc == 2 and lines == []
  [line] = err.splitlines()
  assert line.startswith(f'slurm.sh: error: {tmp_path}/launch/common.sh is missing'), line


@pytest.mark.parametrize('script', [TPU_POD, SLURM], ids=lambda p: p.name)
def test_help_is_the_header_comment(sandbox, script):
  rc, lines, err = run(sandbox, script, '--help', dry_run=False)
  assert rc == 0 and err == ''
  assert lines[-1].endswith('See launch/README.md.') and not lines[-1].startswith('#')
  assert not any(line.startswith(('!', 'SBATCH', 'set -')) for line in lines)


def test_readme_states_what_the_scripts_do():
  """launch/README.md's paths, subcommands and defaults are the scripts' own."""
  readme = (ROOT / 'launch' / 'README.md').read_text()
  tpu = TPU_POD.read_text()
  subcommands = re.search(r'^  (create \| .*)\) ;;$', tpu, re.M).group(1).split(' | ')
  assert 'stop' in subcommands
  for sub in subcommands:
    assert f'launch/tpu_pod.sh {sub}' in readme, sub
  for path in ('~/simclr_logs/simclr-$(hostname).log', './tpu_logs/$TPU_NAME/simclr_logs/',
               '~/simclr_venv', '~/simclr_jax', '`simclr-<jobid>.out`'):
    assert path in readme, path
  assert 'REMOTE_LOGS=simclr_logs' in tpu and 'log_dir="${log_dir:-tpu_logs/$TPU_NAME}"' in tpu
  assert '`==== simclr_jax.main started 2025-01-31T09:00:00Z ====`' in readme
  assert SEPARATOR.fullmatch('==== simclr_jax.main started 2025-01-31T09:00:00Z ====')
  assert 'STOP_TIMEOUT="${STOP_TIMEOUT:-120}"' in tpu and '`STOP_TIMEOUT` (120)' in readme
  assert '#SBATCH --exclusive' in SLURM.read_text() and '--exclusive' in readme
  assert 'bash 3.2' in readme


# ---- the platform configs ----

@pytest.mark.parametrize('module,chip,num_devices', [
    (gpu_8x, 'h100', 8), (tpu_v3_32, 'tpu_v3', 32), (tpu_v3_128, 'tpu_v3', 128)])
def test_platform_config_hardware_and_validation(module, chip, num_devices):
  config = module.get_config()
  assert (config.hardware.chip, config.hardware.num_devices) == (chip, num_devices)
  assert config.train.batch_size == 4096 and config.model.dtype == 'bfloat16'
  assert config.model.resnet_depth == 50 and config.data.dataset == 'imagenet2012'
  validation.validate(config, num_devices=config.hardware.num_devices)
