#!/usr/bin/env bash
# Run here (a machine with the project's .venv and internet) before lending a GPU:
# it puts into the repository what benchmarks/gpu/run.sh needs on a GPU machine that
# reaches nothing outside, then prints the device tool's call.
#   .whl/                       wheels of the packages the GPU image lacks (its python3
#                               has torch, numpy, safetensors, sklearn, pytest, timm...;
#                               quality.py also needs pydantic and pydantic-settings)
#   .gpu-data/fashion-mnist/    Fashion-MNIST's four idx .gz files (30 MB)
# Both are ignored by git (.gitignore), so the call must name them in `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}

# the versions this project runs with, for CPython 3.12 on x86-64 (the GPU image's)
WHEELS=$("$PY" - <<'PY'
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "pydantic-settings", "annotated-types",
         "typing-inspection", "python-dotenv", "typing-extensions"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
mkdir -p .whl
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl $WHEELS
echo "wheels: $(ls .whl | tr '\n' ' ')"

SRC=${MIXLAB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p .gpu-data/fashion-mnist
cp "$SRC"/*-ubyte.gz .gpu-data/fashion-mnist/
echo "fashion-mnist: $(ls .gpu-data/fashion-mnist | tr '\n' ' ')"
echo "$(git rev-parse --short HEAD)$(git status --porcelain --untracked-files=no | grep -q . \
  && echo ' +uncommitted changes')" > .gpu-data/commit.txt
echo "sizes: $(du -sh .whl .gpu-data | tr '\n' ' ') (the device tool carries at most 64 MiB with the tree)"
cat <<'CALL'

The device tool's call (one run; about 8 minutes of the 10-15 a session gets):
  run(command="bash benchmarks/gpu/run.sh", carry=[".whl", ".gpu-data"], timeout_s=540)
Then paste $OUT/summary.md (printed at the end) into benchmarks/RESULTS.md, and
give the machine back unless you rerun at once.
CALL
