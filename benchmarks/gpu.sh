#!/usr/bin/env bash
# bf16 training throughput and MFU of a BERT-base + ViT-B/16 + Whisper-base mmagent model at batch
# sizes 32, 64, 128 and 256, on a GPU machine, in at most 8 minutes. Everything is built from
# configs (no downloads). Prints a table; writes benchmarks/results/gpu.json (and RESULTS.md).
#
#   benchmarks/gpu.sh                      # the full run (needs a CUDA GPU)
#   benchmarks/gpu.sh --smoke              # tiny configs, batch 2, 2 steps: runs on CPU too
#   benchmarks/gpu.sh --peak-tflops 312    # MFU against another peak (A100: 312 bf16 dense)
#
# PYTHON overrides the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
case " $* " in
  *" --smoke "*) ;;
  *) "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA GPU visible to torch (use --smoke for the CPU check)")' ;;
esac
"$PY" -c 'import torch; print(f"torch {torch.__version__}, " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"))'
exec timeout --signal=INT --kill-after=20 480 "$PY" -m benchmarks.gpu_throughput "$@"
