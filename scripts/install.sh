#!/usr/bin/env bash
# Install l2g-pipeline into ./.venv from PyPI (torch 2.13.0 + torchvision 0.28.0 and the rest,
# pinned in pyproject.toml). Usage: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch and torchvision must both come from PyPI: a CPU-only torch wheel from a local
# find-links folder makes `import torchvision` fail ("operator torchvision::nms does not exist").
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL || true
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade uv
.venv/bin/python -m uv pip install --compile-bytecode --python .venv/bin/python -e '.[test]'
.venv/bin/python -c "import torch, torchvision, pydensecrf.densecrf; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
