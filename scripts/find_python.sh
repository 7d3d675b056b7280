#!/usr/bin/env bash
# Prints the interpreter for the project's venv: python3.13 where one is installed (pyenv keeps one
# on these machines), else the newest python3 >= 3.11 on PATH.
set -euo pipefail
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; }
candidates=()
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for v in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.13(\.|$)' | sort -V -r); do
    candidates+=("$root/versions/$v/bin/python3.13")
  done
fi
candidates+=(python3.13 python3.14 python3.12 python3.11 python3)
for c in "${candidates[@]}"; do
  if p=$(command -v "$c" 2>/dev/null) && ok "$p"; then echo "$p"; exit 0; fi
done
echo "find_python: no python >= 3.11 found" >&2
exit 1
