"""What every command-line entry point shares: absl flag errors as one `error:` line, exit codes.

`python -m simclr_jax.main|plan|convert|export|prepare` all parse with `parse_flags` (pass it to
app.run's flags_parser), so a bad flag or a mistyped config key costs one line and exit
status 2, never a traceback; --helpfull and --flagfile work as absl defines them.
"""

import re
import sys

from absl import flags

EXIT_INPUT_ERROR = 2  # Bad input: nothing was compiled or written.
EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped with a checkpoint; rerun to resume.


def print_error(msg: str) -> None:
  """One `error:` line in ONE write: print() writes the text and the newline separately, and
  a traceback another thread prints while the process exits (orbax's asyncio loop) could land
  between them, on our line."""
  sys.stderr.write(f'error: {msg}\n')
  sys.stderr.flush()


def fail(msg: str, code: int = EXIT_INPUT_ERROR) -> None:
  print_error(msg)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error as one `error:` line and exit status 2 (a mistyped
  config key otherwise ends in a long ml_collections traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # Bad value, missing required flag, unknown flag.
    fail(f'{e}')
  except (AttributeError, KeyError) as e:  # A config key that does not exist.
    fail(_unknown_key_message(argv, e))
  except (OSError, ImportError, SyntaxError) as e:  # The --config file itself.
    fail(f'--config: {" ".join(str(e).split())}')
  return []


def _unknown_key_message(argv: list[str], e: Exception) -> str:
  text = str(e.args[0] if e.args else e).replace('\\n', ' ').replace('\n', ' ')
  text = ' '.join(text.replace("\\'", "'").split()).strip('"\'')
  key = re.match(r"'?([A-Za-z0-9_]+)", text)
  key = key.group(1) if key else ''
  for arg in argv[1:]:
    name = arg.split('=', 1)[0]
    if name.startswith('--config.') and key and key in name.split('.'):
      parts = name[2:].split('.')
      group = '.'.join(parts[:parts.index(key)])
      hint = re.search(r'Did you mean "([^"]+)"', text)
      return (f'{arg}: {group} has no key {key!r}' +
              (f'; did you mean {group}.{hint.group(1)}?' if hint else
               '; see configs/default.py for every key.'))
  return f'unknown config key: {text}'


