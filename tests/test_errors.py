"""Every input error a user can make ends in ONE line `error: ...` naming the key, the value and
what is allowed, exit status 2, before any compilation, with nothing written to the workdir.

Table-driven over real `python -m simclr_jax.main` runs (the CLI is where users meet them).
"""

import subprocess
import sys

import pytest

import multiprocess  # pylint: disable=g-bad-import-order

# (case id, extra argv, fragments the error line must contain)
CASES = [
    ('mistyped key', ['--config.train.batch_sise=64'],
     ['--config.train.batch_sise=64', "no key 'batch_sise'", 'did you mean config.train.batch_size']),
    ('mistyped group', ['--config.trian.batch_size=64'], ["no key 'trian'", 'config.train']),
    ('value of the wrong type', ['--config.train.batch_size=abc'],
     ['--config.train.batch_size=abc', 'int']),
    ('invalid value', ['--config.model.resnet_depth=42'],
     ['config.model.resnet_depth=42', '[10, 18, 34, 50, 101, 152, 200]']),
    ('batch not divisible by the devices', ['--config.train.batch_size=20'],
     ['config.train.batch_size=20', 'multiple of the 8 devices']),
    ('batch larger than the data', ['--config.train.batch_size=8000'],
     ['config.train.batch_size=8000', 'at most the 4000 examples']),
    ('unknown mode', ['--config.mode=train'], ["config.mode='train'", "'pretrain'"]),
    ('unknown data set', ['--config.data.dataset=no_such_set'],
     ["config.data.dataset='no_such_set'", 'embedded_mnist']),
    ('unknown split', ['--config.data.eval_split=validation'],
     ["config.data.eval_split='validation'", "['test', 'train']"]),
    ('unprepared data', ['--config.data.dataset=cifar10', '--config.data.data_dir={tmp}/tfds'],
     ["'cifar10'", 'not prepared', 'tfds build cifar10 --data_dir=']),
    ('missing config file', ['--config=configs/no_such.py'],
     ['--config=configs/no_such.py', 'No such file']),
    ('not a checkpoint', ['--config.mode=linear_eval', '--config.init_checkpoint={tmp}/nothing'],
     ["config.init_checkpoint='", 'pretraining run']),
    ('bad process id', ['--coordinator_address=127.0.0.1:1', '--num_processes=2',
                        '--process_id=2'], ['--process_id=2', '0..1']),
]


def _main(args, tmp_path, workdir):
  args = [a.replace('{tmp}', str(tmp_path)) for a in args]
  if not any(a.startswith('--config=') for a in args):
    args = ['--config=configs/test.py'] + args
  return subprocess.run([sys.executable, '-m', 'simclr_jax.main', *args, f'--workdir={workdir}'],
                        cwd=multiprocess.ROOT, env=multiprocess.env_for(8), capture_output=True,
                        text=True, timeout=180)


@pytest.mark.parametrize('case,args,fragments', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case, args, fragments, tmp_path):
  workdir = tmp_path / 'run'
  r = _main(args, tmp_path, workdir)
  assert r.returncode == 2, f'{case}: exit {r.returncode}\n{r.stderr[-3000:]}'
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, r.stderr[-3000:]
  assert 'Traceback' not in r.stderr, r.stderr[-3000:]
  for f in fragments:
    assert f in errors[0], f'{case}: {f!r} not in {errors[0]!r}'
  assert not workdir.exists(), f'{case}: the workdir was created or written'


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  r = _main([], tmp_path, blocker / 'sub')
  assert r.returncode == 2
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'is not writable' in errors[0] and 'Traceback' not in r.stderr
  assert blocker.read_text() == 'not a directory'
