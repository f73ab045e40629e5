#!/usr/bin/env bash
# Idempotent set-up of the peers' virtual environment for benchmarks/peers.py:
# benchmarks/.venv-autogluon with AutoGluon MultiModal (git-ignored; never in .venv: AutoGluon
# needs torch < 2.14, transfuse's .venv has 2.14.1). Quick on a rerun: a stamp keyed on this
# script's pins skips the install.
#
# torch: PyPI has no small CPU build of torch 2.13 that torchvision 0.28 loads beside (the CPU
# file on this kind of machine, torch-2.13.0+cpu, has no working torchvision: torchvision's _C.so
# links libtorch_cuda.so), so the venv gets what `pip install autogluon.multimodal` gives a user:
# PyPI's torch 2.13.0 CUDA build (runs on the CPU here). About 6 GB on disk (du -sh the venv).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
VENV=.venv-autogluon
AG_VERSION=1.6.3
TORCH="torch==2.13.0 torchvision==0.28.0"
stamp="$VENV/.stamp-$(printf '%s %s %s' "$AG_VERSION" "$TORCH" "$(sha256sum setup_peers.sh)" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "setup_peers: ready ($VENV: autogluon.multimodal $AG_VERSION)"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# --isolated: the machine's pip config caps torch at 2.14.1 and offers a local torch-2.13.0+cpu file
# whose torchvision does not import; take PyPI's wheels as a user's pip would.
PIP=("$VENV/bin/pip" install -q --isolated --cert /etc/ssl/certs/ca-certificates.crt --disable-pip-version-check)
echo "setup_peers: installing AutoGluon MultiModal $AG_VERSION into benchmarks/$VENV (first time: a few minutes, ~6 GB)"
"${PIP[@]}" --upgrade pip
"${PIP[@]}" $TORCH
"${PIP[@]}" "autogluon.multimodal==$AG_VERSION" $TORCH psutil
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "import autogluon.multimodal, torch, torchvision, timm, transformers" \
  || { echo "setup_peers: AutoGluon failed to install" >&2; exit 1; }
rm -f "$VENV"/.stamp-*
touch "$stamp"
echo "setup_peers: ready ($VENV: autogluon.multimodal $AG_VERSION, $(du -sh "$VENV" | cut -f1))"
