#!/usr/bin/env bash
# Build (once) the reference venv for HPSv3: hpsv3==1.0.0 pins transformers 4.45, which cannot sit
# beside flowalign's transformers 5.x. Cached at ~/.cache/flowalign/hpsv3-ref-<hash of the two
# requirement files> (FLOWALIGN_HPSV3_VENV overrides the location); concurrent callers wait on a
# lock; builds for older requirement hashes are removed (each is ~6 GB: torch + CUDA wheels).
# Prints the venv's python on stdout (everything else on stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
key=$(cat "$here/requirements.txt" "$here/requirements-nodeps.txt" | sha256sum | cut -c1-16)
venv="${FLOWALIGN_HPSV3_VENV:-$HOME/.cache/flowalign/hpsv3-ref-$key}"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
# hpsv3 itself only imports with score.py's stubs in place: check its metadata, not an import
check='import torch, transformers, importlib.metadata as m; m.version("hpsv3")'
if [ -f "$venv/.complete" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "== reusing $venv" >&2
else
  echo "== creating $venv" >&2
  rm -rf "$venv"
  if [ -z "${FLOWALIGN_HPSV3_VENV:-}" ]; then
    find "$(dirname "$venv")" -maxdepth 1 -type d -name 'hpsv3-ref-*' ! -name "$(basename "$venv")" \
      -exec rm -rf {} + 2>/dev/null || true
  fi
  python3 -m venv "$venv"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
  "$venv/bin/pip" install -q --no-deps -r "$here/requirements-nodeps.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
