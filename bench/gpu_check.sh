#!/usr/bin/env bash
# GPU check of issue 3, for a session lent an accelerator: train Office a few epochs on CUDA with the
# real trainer loop and print seconds per epoch and a full evaluation, beside the CPU numbers.
# Usage (on the device machine, from the repository root): bash bench/gpu_check.sh
set -euo pipefail
export INFODCL_DATA_MIRROR="${INFODCL_DATA_MIRROR:-$(cd .. && pwd)/shared/data}"
make install TORCH="${TORCH:-torch}"
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"
.venv/bin/python bench/bench_train_eval.py --device cuda --epochs 3
