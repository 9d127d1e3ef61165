#!/usr/bin/env bash
# The GPU measurements of issue 13 in one short run, for a session lent a GPU
# machine for a few minutes (the device tool: nothing is installed from the
# internet there, and what the run writes under $OUT comes back).
#
# In order, each under a time cap (the budget, --budget, default 450 s, shared):
#   1. benchmarks/train_throughput.py --device cuda   mixlab's loop vs a DataLoader loop
#      (num_workers 0/2/4/8 tried, pin_memory), target >= 3x
#   2. benchmarks/mixing.py --device cuda             target: mixup <= 1.6x one device copy
#   3. the CUDA cases of the tests                    pytest -m cuda (skipped on CPU)
#   4. benchmarks/quality.py: preact_resnet18 on Fashion-MNIST at 32x32 with the mixup
#      paper's recipe (--recipe paper --fashion-size 32), ERM vs mixup, --epochs N
# then prints (and writes to $OUT/summary.md) a section to paste into RESULTS.md.
#
# What the GPU machine needs (see docs/benchmarks.md, "On a GPU"):
#   - its own python3 with a CUDA build of torch (the project's .venv holds a CPU
#     build for Python 3.11: do not carry it);
#   - .whl/: wheels of what that python3 lacks (pydantic and friends, for quality.py);
#   - .gpu-data/fashion-mnist/: the four idx .gz files, unless the machine has
#     /usr/share/datasets/fashion-mnist or MIXLAB_FASHION_MNIST_DIR.
# benchmarks/gpu/prepare.sh makes both here and prints the device tool's call.
#
# Usage: bash benchmarks/gpu/run.sh [--device cuda|cpu] [--quick] [--budget S] [--epochs N]
#        [--noise 0,0.4]
# --device cpu --quick is the dry run: every stage, tiny, on the CPU, to check the script.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD

DEVICE=cuda QUICK=0 BUDGET=450 EPOCHS=20 NOISE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --noise) NOISE=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "run.sh: --device cuda or cpu" >&2; exit 2 ;; esac

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1
STARTED=$(date +%s)
elapsed() { echo $(( $(date +%s) - STARTED )); }

# --- python: the machine's CUDA torch (or, for the CPU dry run, the project's venv) ---
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && { [ "$DEVICE" = cpu ] || .venv/bin/python -c \
      "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }; then
    PYTHON=.venv/bin/python
  fi
fi
if ! "$PYTHON" -c "import pydantic_settings" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/mixlab-site .whl/*.whl || echo "run.sh: installing .whl/ failed"
    export PYTHONPATH=/tmp/mixlab-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "run.sh: $PYTHON lacks pydantic-settings and there is no .whl/: quality.py will fail"
  fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export MIXLAB_DATA_DIR=/tmp/mixlab-gpu-run TORCHINDUCTOR_CACHE_DIR=/tmp/mixlab-inductor

# --- Fashion-MNIST: configured, Debian's, or carried ---
FMNIST=""
for d in "${MIXLAB_FASHION_MNIST_DIR:-}" /usr/share/datasets/fashion-mnist .gpu-data/fashion-mnist; do
  if [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ]; then FMNIST=$(cd "$d" && pwd); break; fi
done
[ -n "$FMNIST" ] && export MIXLAB_FASHION_MNIST_DIR=$FMNIST

echo "== mixlab GPU run: device $DEVICE, quick $QUICK, budget ${BUDGET}s, $(date -u +%FT%TZ)"
# the copy on a GPU machine may have no .git: prepare.sh wrote the commit beside the data
if git rev-parse HEAD >/dev/null 2>&1; then
  echo "commit: $(git rev-parse --short HEAD)$(git status --porcelain --untracked-files=no \
    | grep -q . && echo ' +uncommitted changes')"
else
  echo "commit: $(cat .gpu-data/commit.txt 2>/dev/null || echo unknown) (from prepare.sh)"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader
"$PYTHON" - <<'PY'
import os, platform, torch
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()} ({os.path.realpath(__import__('sys').executable)}), "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if cuda else None}, "
      f"GPU {torch.cuda.get_device_name(0) if cuda else 'none'}, {os.cpu_count()} CPUs")
PY
echo "fashion-mnist: ${FMNIST:-not found (the quality stage will fail)}"

# stage NAME CAP command...: runs under min(CAP, what is left of the budget)
STATUS=()
stage() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - $(elapsed) - 10 ))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 15 ]; then
    echo "== $name: skipped, ${left}s of the budget left"; STATUS+=("$name: skipped (budget)")
    return
  fi
  echo; echo "== $name (cap ${cap}s, at $(elapsed)s): $*"
  local t0; t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$cap" "$@"
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  [ $rc -eq 124 ] && echo "== $name: stopped at its cap (${cap}s)"
  echo "== $name: exit $rc after ${took}s"
  STATUS+=("$name: exit $rc, ${took}s$([ $rc -eq 124 ] && echo ', hit its cap')")
}

if [ "$QUICK" = 1 ]; then
  TT=(--quick --rounds 1 --train-size 1024 --eval-size 256)
  MX=(--quick)
  QL=(--fashion-subset 1000 --epochs fashion-mnist=1 --width 4 --per-epoch-test off)
else
  TT=(--rounds 3)
  MX=()
  QL=(--epochs "fashion-mnist=$EPOCHS")
fi

stage train_throughput 120 "$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" "${TT[@]}" \
  --json "$OUT/train_throughput.json"
stage mixing 45 "$PYTHON" benchmarks/mixing.py --device "$DEVICE" "${MX[@]}" \
  --json "$OUT/mixing.json"
# the files that hold CUDA cases; conftest.py above tests/unit (Postgres, Redis) stays out
mapfile -t CUDA_TESTS < <(grep -l "pytest.mark.cuda" tests/unit/test_*.py | grep -v test_gpu_path;
                          echo tests/unit/test_gpu_path.py)  # its compile test is the slowest
stage cuda_tests 150 "$PYTHON" -m pytest -q -m cuda --confcutdir tests/unit -p no:cacheprovider \
  -rs --junitxml "$OUT/pytest.xml" "${CUDA_TESTS[@]}"
stage quality 300 "$PYTHON" benchmarks/quality.py --datasets fashion-mnist --device "$DEVICE" \
  --fashion-model preact_resnet18 --recipe paper --fashion-size 32 --noise "$NOISE" \
  --methods none,mixup --seeds 1 --threads 0 --progress "${QL[@]}" \
  --json "$OUT/quality.json" --markdown "$OUT/quality.md"

echo; echo "== stages"; printf '  %s\n' "${STATUS[@]}"
"$PYTHON" benchmarks/gpu/summary.py "$OUT" "${STATUS[@]}"
echo "== done in $(elapsed)s; outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
