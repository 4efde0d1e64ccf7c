#!/usr/bin/env bash
# Set up cifake_lib on a Google Colab runtime (or any machine with torch already installed).
# Idempotent: safe to run again. Never upgrades the runtime's own torch, transformers or datasets.
#
#   bash colab_setup.sh            # from a checkout of the repository
#   curl -sSL <raw URL of this file> | bash    # clones the repository first
set -euo pipefail

REPO_URL="${CIFAKE_REPO_URL:-https://github.com/cifake-lib/cifake_lib}"   # see cifake_lib/app/colab.py
BRANCH="${CIFAKE_BRANCH:-main}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" 2>/dev/null && pwd || pwd)"

if [ -f "$HERE/pyproject.toml" ] && grep -q 'name = "cifake_lib"' "$HERE/pyproject.toml"; then
  SRC="$HERE"
else
  SRC="${CIFAKE_REPO_DIR:-$PWD/cifake_lib_repo}"
  if [ -d "$SRC/.git" ]; then
    echo "cifake setup: updating $SRC"
    git -C "$SRC" pull --ff-only -q || echo "cifake setup: could not update $SRC; using it as it is"
  else
    echo "cifake setup: cloning $REPO_URL ($BRANCH) into $SRC"
    git clone -q --depth 1 --branch "$BRANCH" "$REPO_URL" "$SRC"
  fi
fi

# Pin what the runtime already has, so pip keeps Colab's CUDA torch and its transformers/datasets.
CONSTRAINTS="$(mktemp)"
python3 -m pip freeze 2>/dev/null | grep -iE '^(torch|torchvision|torchaudio|transformers|datasets|accelerate|numpy)==' > "$CONSTRAINTS" || true
echo "cifake setup: keeping $(tr '\n' ' ' < "$CONSTRAINTS")"

# A regular (non-editable) install: importable in the running kernel without a restart.
python3 -m pip install -q --constraint "$CONSTRAINTS" "$SRC"
rm -f "$CONSTRAINTS"

python3 - <<'PY'
import torch, transformers, cifake_lib
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"cifake setup: cifake_lib {cifake_lib.__version__} ready "
      f"(torch {torch.__version__}, transformers {transformers.__version__}, {gpu})")
PY
