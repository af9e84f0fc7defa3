# Shell functions shared by launch/tpu_pod.sh and launch/slurm.sh, which source this file after
# setting PROG (their name in error lines) and `set -euo pipefail`. Not a command of its own.
#
# Written for bash 3.2 (macOS /bin/bash) and 4.2 (RHEL 7) as well as newer ones: under set -u,
# bash before 4.4 stops on an empty array's "${a[@]}", so every array expansion is written
# ${a[@]+"${a[@]}"}, and nothing needs bash 4 (no associative arrays, mapfile, ${x,,}).

die() { echo "$PROG: error: $*" >&2; exit 2; }
warn() { echo "$PROG: warning: $*" >&2; }

usage() {  # usage FILE: FILE's header comment, from line 2 through its 'See launch/README.md.'.
  sed -n '2,/See launch\/README\.md\./p' "$1" | sed 's/^# \{0,1\}//'
}

quote() {  # One word, quoted only when the shell would change it, so printed lines can be pasted.
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    # The replacement comes from a variable: written inline ('\'\\\'\''), bash <= 4.2 keeps its
    # backslashes (it does no quote removal there) and prints a word that does not paste.
    local sq="'" escaped="'\\''"
    printf "'%s'" "${1//$sq/$escaped}"
  fi
}

do_cmd() {  # Runs a command, or under --dry-run prints it on one line.
  if (( dry_run )); then
    local words=() w
    for w in "$@"; do words+=("$(quote "$w")"); done
    printf '%s\n' ${words[@]+"${words[*]}"}
  else
    "$@"
  fi
}

# DRY_RUN=1 (any value but 0 or empty) is the same as --dry-run, which the scripts' own argument
# loops also accept.
dry_run=0
case "${DRY_RUN:-0}" in 0 | '') ;; *) dry_run=1 ;; esac
