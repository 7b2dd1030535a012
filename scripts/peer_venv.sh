#!/usr/bin/env bash
# A peer whose pins clash with saekit's (circuit-tracer 0.5.0: transformers<=4.57.3,
# huggingface-hub<1.0) gets its own virtual environment under .venvs/NAME (gitignored).
# Idempotent: a venv that already imports the peer at the pinned version is left as it is
# (quick). torch goes in first, pinned to the CPU build on local disk (never a bare torch),
# so the peer's own torch requirement is already met.
#
#   scripts/peer_venv.sh circuit-tracer      -> prints the venv's python
set -euo pipefail
cd "$(dirname "$0")/.."
peer="${1:?usage: scripts/peer_venv.sh circuit-tracer}"
case "$peer" in
  circuit-tracer) spec="circuit-tracer==0.5.0"; module="circuit_tracer"; version="0.5.0" ;;
  *) echo "peer_venv: unknown peer '$peer' (known: circuit-tracer)" >&2; exit 2 ;;
esac
venv=".venvs/$peer"
py="$venv/bin/python"
check="import importlib.metadata as m, $module; assert m.version('$peer') == '$version'"
if [ -x "$py" ] && "$py" -c "$check" >/dev/null 2>&1; then
  echo "$py"; exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$py" -m pip install -q torch==2.13.0 >&2
"$py" -m pip install -q "$spec" >&2
"$py" -c "$check"
echo "$py"
