#!/usr/bin/env bash
# The GPU check: one short script for any machine with a CUDA GPU (about 10 minutes,
# 5 of them set-up on a fresh machine). It prints the figures for docs/benchmarks.md:
#   1. the GPU, and whether CTranslate2 and torch see it;
#   2. bench/engine.py with the gpu-offline profile (CUDA, float16, batched): engine
#      against bare faster-whisper, RTF per stage, peak memory;
#   3. bench/compute_backend.py: a generated 10-minute episode through the Dagster job with
#      the model step in the run's process and in a Pipes subprocess worker, on CUDA;
#   4. bench/long_episode.py with gpu-offline: the engine's CLI against bare faster-whisper
#      (batched, same settings) on a generated 10-minute episode, each in a fresh process:
#      their wall-time ratio, WER, longest gap, DER, cpWER, per-stage times, peak RSS;
#   5. large-v3-turbo, when a local copy exists (TWIML_TURBO_DIR, or the Hugging Face cache).
#
#   bash bench/gpu_check.sh                # everything
#   MINUTES=30 bash bench/gpu_check.sh     # a longer episode for step 3
# The output also goes to $OUT/gpu_check.txt when OUT is set (the device tool's folder).
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES="${MINUTES:-10}"
LOG="${OUT:-/tmp}/gpu_check.txt"
exec > >(tee "$LOG") 2>&1

section() { printf '\n==> %s\n' "$*"; }

# An interpreter that already has the stack (PY=...), else the project's venv, made by
# scripts/setup.sh where the registries can be reached.
PY="${PY:-.venv/bin/python}"
if ! "$PY" -c "import faster_whisper, pyannote.audio, dagster" 2>/dev/null; then
  section "set-up (scripts/setup.sh; idempotent)"
  bash scripts/setup.sh || { echo "set-up failed: set PY to a Python with the stack"; exit 1; }
  PY=.venv/bin/python
fi

section "the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: none"
$PY - <<'PY'
import ctranslate2, torch
print(f"ctranslate2 {ctranslate2.__version__}: {ctranslate2.get_cuda_device_count()} CUDA device(s);"
      f" float16 supported: {'float16' in ctranslate2.get_supported_compute_types('cuda')}")
print(f"torch {torch.__version__}: cuda available {torch.cuda.is_available()}",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

section "bench/engine.py --profile gpu-offline (CUDA float16, batched tiny.en + offline diariser)"
$PY bench/engine.py --profile gpu-offline --repeats 3 --json "${OUT:-/tmp}/engine-gpu-offline.json"

section "bench/compute_backend.py: ${MINUTES}-min episode, model step local vs Pipes subprocess, CUDA"
$PY bench/compute_backend.py --minutes "$MINUTES" --profile gpu-offline \
  --json "${OUT:-/tmp}/compute-gpu-offline.json"

section "bench/long_episode.py --profiles gpu-offline: ${MINUTES}-min episode, engine vs bare ratio"
$PY bench/long_episode.py --profiles gpu-offline --episodes "${MINUTES}:11" \
  --json "${OUT:-/tmp}/long-episode-gpu-offline.json"

TURBO="${TWIML_TURBO_DIR:-}"
if [ -z "$TURBO" ]; then
  TURBO=$(ls -d "${HF_HOME:-$HOME/.cache/huggingface}"/hub/models--*large-v3-turbo*/snapshots/* \
    2>/dev/null | head -1)
fi
if [ -n "$TURBO" ] && [ -d "$TURBO" ]; then
  section "bench/engine.py with large-v3-turbo from $TURBO (CUDA float16)"
  $PY bench/engine.py --profile gpu-offline --model "$TURBO" --repeats 2 \
    --json "${OUT:-/tmp}/engine-turbo.json"
else
  section "large-v3-turbo: no local copy (set TWIML_TURBO_DIR to a CTranslate2 directory); skipped"
fi
section "done: figures above, also in $LOG"
