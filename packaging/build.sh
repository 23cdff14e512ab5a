#!/usr/bin/env bash
# Build the standalone mamview application folder for this platform: dist/mamview/mamview.
#
#   packaging/build.sh                 CPU torch (default; ~1 GB folder, runs anywhere)
#   packaging/build.sh --cuda cu128    CUDA torch from the PyTorch index for that CUDA version
#                                      (needs an NVIDIA driver on the target; several GB)
#
# Everything happens in build/bundle-<variant>/ (its own venv, PyInstaller's work folder); the
# source tree and any developer venv are left alone. Then run packaging/smoke_test.sh dist/mamview.
#
# Environment:
#   PYTHON        interpreter for the build venv (default python3; must match torch's wheels, ≥3.11)
#   TORCH_INDEX   extra package index for torch (default: the PyTorch CPU or CUDA index;
#                 "none" uses only pip's configured sources, e.g. a local wheel folder)
#   DIST          output folder (default: <repo>/dist)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DIST="${DIST:-$ROOT/dist}"
VARIANT=cpu
CUDA_TAG=""
PYINSTALLER_SPEC="pyinstaller==6.22.3"   # pinned: hook behaviour changes between releases

while [ $# -gt 0 ]; do
    case "$1" in
        --cuda) VARIANT=cuda; CUDA_TAG="${2:?--cuda needs a CUDA tag such as cu128}"; shift 2 ;;
        --cpu) VARIANT=cpu; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# one source of truth for the torch version: the pin in pyproject.toml
TORCH_VERSION="$(sed -n 's/^ *"torch==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)"
[ -n "$TORCH_VERSION" ] || { echo "build.sh: no torch==X pin found in pyproject.toml" >&2; exit 2; }

BUILD="$ROOT/build/bundle-$VARIANT"
VENV="$BUILD/venv"
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "build venv in $VENV"
if [ ! -d "$VENV" ]; then
    "$PYTHON" -m venv "$VENV"
fi
VBIN="$VENV/bin"
[ -d "$VENV/Scripts" ] && VBIN="$VENV/Scripts"   # Windows (Git Bash)
VPY="$VBIN/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

step "torch $TORCH_VERSION ($VARIANT)"
if [ "$VARIANT" = cpu ]; then
    # a plain `pip install torch` on Linux pulls the multi-GB CUDA build: ask for +cpu explicitly
    index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    spec="torch==$TORCH_VERSION+cpu"
else
    index="${TORCH_INDEX:-https://download.pytorch.org/whl/$CUDA_TAG}"
    spec="torch==$TORCH_VERSION+$CUDA_TAG"
fi
# torch alone from its index (--no-deps): its dependencies come from pip's usual sources below,
# so an unreachable torch index costs one failed look-up, not one per dependency
if [ "$index" = none ]; then
    "${PIP[@]}" install -q --no-deps "$spec"
else
    "${PIP[@]}" install -q --no-deps --retries 1 "$spec" --extra-index-url "$index"
fi

step "mamview (a regular, non-editable install: what the bundle ships is what a wheel ships)"
"${PIP[@]}" install -q "$ROOT"
"${PIP[@]}" install -q "$PYINSTALLER_SPEC" "pyinstaller-hooks-contrib>=2026.9"

step "PyInstaller"
cd "$BUILD"   # PyInstaller writes a log of warnings beside its work folder
MAMVIEW_VARIANT="$VARIANT" MAMVIEW_ROOT="$ROOT" \
    "$VPY" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$DIST" --workpath "$BUILD/work" "$ROOT/packaging/mamview.spec"

APP="$DIST/mamview"
# beside the executable, not in _internal/: what an administrator runs or copies
cp "$ROOT/packaging/install-linux.sh" "$APP/"
if [ -f "$ROOT/packaging/mamview-node.service" ]; then cp "$ROOT/packaging/mamview-node.service" "$APP/"; fi
{
    echo "mamview $("$VPY" -c 'import mamview; print(mamview.__version__)')"
    echo "variant: $VARIANT${CUDA_TAG:+ ($CUDA_TAG)}"
    echo "torch: $("$VPY" -c 'import torch; print(torch.__version__)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sm)"
    echo "source: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$APP/BUILD-INFO.txt"

step "done"
echo "Bundle: $APP ($(du -sh "$APP" | cut -f1); $(find "$APP" -type f | wc -l) files)"
echo "Largest parts:"
du -sh "$APP"/_internal/* 2>/dev/null | sort -rh | head -n 8
echo "Next: packaging/smoke_test.sh $APP"
