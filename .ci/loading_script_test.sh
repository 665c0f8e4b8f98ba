#!/usr/bin/env bash
# CI: the classic loading script (loading_script/multilabel_imagenet.py) under a datasets 3.x release, in its own
# virtual environment. The project's environment (PYTHON, default `python`, with the package installed) writes a
# small dataset folder and a synthetic ImageNet root; a fresh venv with `datasets>=3,<4` then runs
# tests/test_dataset_loading_script.py against them. No network beyond the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."

project_python="${PYTHON:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

"$project_python" - "$work" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from test_dataset_support import BUILD, synthetic_records  # noqa: E402

from multilabel_imagenet.dataset import writer  # noqa: E402

work = Path(sys.argv[1])
labels, proposals = synthetic_records(work / "imagenet", num_train=6, num_val=3)
writer.write_dataset(work / "multilabel-imagenet", BUILD, labels=labels, proposals=proposals)
PY
echo "dataset folder: $(( $(date +%s) - start )) s"

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "datasets>=3,<4" "pillow>=10" "pytest>=8"
"$work/venv/bin/python" -c "import datasets; print('datasets', datasets.__version__)"
echo "datasets 3 venv: $(( $(date +%s) - start )) s"

MLI_DATASET_FOLDER="$work/multilabel-imagenet" MLI_IMAGENET_ROOT="$work/imagenet" \
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_dataset_loading_script.py
echo "loading script test total: $(( $(date +%s) - start )) s"
