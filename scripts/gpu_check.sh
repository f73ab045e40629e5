#!/usr/bin/env bash
# The checks that need a CUDA GPU (merge on CUDA = CPU, a bf16-mixed fine-tune, DDP on 1 GPU,
# ONNX Runtime's CUDA provider = CPU provider): one PASS/FAIL/SKIP line each, exit 1 on a FAIL.
# Without a GPU every check is SKIPped and it exits 0. Usage: scripts/gpu_check.sh [CHECK ...]
# (docs/distributed.md, "GPU checks").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 290 "$py" "$root/scripts/gpu_check.py" "$@"
