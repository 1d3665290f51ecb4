#!/usr/bin/env bash
# Compile umbra with `--features cuda` (and `cuda,cudnn`) on a machine without a GPU: installs the CUDA
# toolkit when nvcc is missing (Debian bookworm non-free: nvidia-cuda-toolkit 11.8), sets what the build
# scripts of candle-kernels (cudaforge) and cudarc read, then builds and compiles the tests without running
# them. Nothing here needs a GPU; scripts/gpu-check.sh is the one that runs on one.
#
#   scripts/cuda-build-check.sh                 # all steps; log per step in $LOG_DIR
#   scripts/cuda-build-check.sh --no-install    # fail instead of installing the toolkit
#   scripts/cuda-build-check.sh --skip-cudnn    # leave out the cuda,cudnn build
#   scripts/cuda-build-check.sh --quick-gguf    # on an overloaded machine: see below
#
# --quick-gguf: candle-kernels also compiles 15 GGUF/MoE sources (llama.cpp's quantized matmuls, which umbra
# never calls) into a static library, at -O3 with SASS: about 1.5 CPU-minutes per file with nvcc 11.8. With
# this flag an nvcc wrapper compiles those objects (and only those: not the PTX kernels umbra runs) with
# `-Xcicc -O0` and embeds PTX instead of SASS (code=compute_XX, no ptxas). Every source still goes through
# nvcc's front end and NVVM, so compile errors are still caught; the binary is for checking, not for running.
#
# Environment (defaults in brackets):
#   CARGO_TARGET_DIR   [/work/target-cuda]  kept apart from the CPU build: a feature change rebuilds everything
#   CUDA_COMPUTE_CAP   [90; 89 with nvcc 11] no nvidia-smi here, so the target GPU is named (90 = H100/H200;
#                                           candle-kernels makes 90 into 90a, which needs nvcc >= 12)
#   NVCC_CCBIN         [g++-11 if present]  host compiler for nvcc 11.8 (which supports gcc <= 11)
#   CUDNN_LIB_DIR      [searched]           a folder holding libcudnn.so.9 (PyPI nvidia-cudnn-cu12/cu13)
#   NICE               [19]                 builds run under `nice -n $NICE`
#   JOBS               [2]                  cargo -j and nvcc's parallel jobs
#   LOG_DIR            [$CARGO_TARGET_DIR/cuda-build-check-logs]
# Exit status: 0 when every step that ran passed; 1 otherwise (the failing step's log is printed).
set -uo pipefail

install=1
cudnn=1
quick_gguf=0
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    --skip-cudnn) cudnn=0 ;;
    --quick-gguf) quick_gguf=1 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cuda-build-check: unknown argument '$a' (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-cuda}"
NICE="${NICE:-19}"
JOBS="${JOBS:-2}"
LOG_DIR="${LOG_DIR:-$CARGO_TARGET_DIR/cuda-build-check-logs}"
mkdir -p "$LOG_DIR"
# cudaforge compiles kernels in parallel with rayon: keep it to $JOBS on a shared machine.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$JOBS}"

say() { printf '[cuda-build-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# --- 1. the toolkit -------------------------------------------------------------------------------
install_toolkit() {
  if [ "$(id -u)" != 0 ]; then
    say "nvcc not found and not root: install the CUDA toolkit (apt-get install nvidia-cuda-toolkit, Debian non-free) or put nvcc on PATH"
    return 1
  fi
  local src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ] && ! grep -q 'non-free' "$src"; then
    say "adding 'contrib non-free' to the Debian components in $src"
    sed -i 's/^Components: main$/Components: main contrib non-free/' "$src"
  fi
  say "apt-get install nvidia-cuda-toolkit g++-11 (about 2 GB download)"
  apt-get update -q >"$LOG_DIR/apt.log" 2>&1 &&
    DEBIAN_FRONTEND=noninteractive nice -n "$NICE" apt-get install -y -q --no-install-recommends \
      nvidia-cuda-toolkit g++-11 >>"$LOG_DIR/apt.log" 2>&1 || {
    tail -20 "$LOG_DIR/apt.log"
    say "installing the toolkit failed (log: $LOG_DIR/apt.log)"
    return 1
  }
}

if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/lib/nvidia-cuda-toolkit/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
if ! command -v nvcc >/dev/null 2>&1; then
  [ "$install" = 1 ] || { say "nvcc not found (and --no-install)"; exit 1; }
  install_toolkit || exit 1
fi
NVCC="$(command -v nvcc)"
REAL_NVCC="$NVCC"
NVCC_RELEASE="$("$NVCC" --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)"
say "nvcc: $NVCC — release $NVCC_RELEASE"
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  # The target is an H100/H200 (sm_90), but candle-kernels' builder (cudaforge 0.1.6) turns a bare "90" into
  # "90a" (Hopper's arch-specific features), which only nvcc >= 12.0 knows. With nvcc 11.x the check builds
  # for 89 instead; candle's kernels are PTX, which the driver JIT-compiles for the GPU it runs on.
  if [ "${NVCC_RELEASE%%.*}" -ge 12 ] 2>/dev/null; then CUDA_COMPUTE_CAP=90; else CUDA_COMPUTE_CAP=89; fi
fi
export CUDA_COMPUTE_CAP
if [ -z "${NVCC_CCBIN:-}" ]; then
  # nvcc 11.8 supports gcc <= 11; Debian's wrapper accepts gcc 12, but g++-11 is the supported pairing.
  if command -v g++-11 >/dev/null 2>&1; then
    export NVCC_CCBIN=g++-11
  elif [ "$install" = 1 ] && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++-11 >>"$LOG_DIR/apt.log" 2>&1 &&
      export NVCC_CCBIN=g++-11
  fi
fi
say "host compiler: ${NVCC_CCBIN:-nvcc default ($(gcc -dumpfullversion 2>/dev/null))}"
if [ "$quick_gguf" = 1 ]; then
  # cudaforge runs $NVCC when it is set; its cache is keyed by source, arguments and arch, not by nvcc's path
  wrapper="$CARGO_TARGET_DIR/nvcc-quick-gguf"
  cat >"$wrapper" <<EOF
#!/usr/bin/env bash
# written by scripts/cuda-build-check.sh --quick-gguf: object compiles (-c) get -Xcicc -O0 and PTX instead of SASS
args=()
quick=0
for a in "\$@"; do [ "\$a" = -c ] && quick=1; done
for a in "\$@"; do
  if [ \$quick = 1 ] && [[ "\$a" == *arch=compute_*,code=sm_* ]]; then p="\${a%%,code=*}"; a="\$p,code=\${p##*arch=}"; fi
  args+=("\$a")
done
[ \$quick = 1 ] && args+=(-Xcicc -O0)
exec "$NVCC" "\${args[@]}"
EOF
  chmod +x "$wrapper"
  export NVCC="$wrapper"
  say "--quick-gguf: the GGUF/MoE objects are compiled by $wrapper (-Xcicc -O0, PTX only)"
fi
# cudarc finds the libraries (libcuda, libcublas, libcurand, libnvrtc) under $CUDA_ROOT/lib{,64,/x86_64-linux-gnu,..}
# and reads the CUDA version from `nvcc --version` (candle enables cuda-version-from-build-system).
CUDA_ROOT="${CUDA_ROOT:-$(dirname "$(dirname "$(readlink -f "$REAL_NVCC")")")}"
case "$CUDA_ROOT" in /usr/lib/nvidia-cuda-toolkit) CUDA_ROOT=/usr ;; esac # Debian: headers and libs under /usr
export CUDA_ROOT
say "CUDA_ROOT=$CUDA_ROOT CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# --- 2. cuDNN (for cuda,cudnn): cudarc's `cudnn` feature binds cuDNN 9 and links -lcudnn -----------
find_cudnn() {
  local d
  for d in ${CUDNN_LIB_DIR:-} /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 \
    /tmp/pyenv/lib/python3*/site-packages/nvidia/cudnn/lib /tmp/cudnn-wheel/nvidia/cudnn/lib; do
    if ls "$d"/libcudnn.so.9* >/dev/null 2>&1; then
      echo "$d"
      return 0
    fi
  done
  return 1
}
if [ "$cudnn" = 1 ]; then
  if ! cudnn_dir="$(find_cudnn)"; then
    if [ "$install" = 1 ] && command -v python3 >/dev/null 2>&1; then
      say "no libcudnn.so.9 found: pip install nvidia-cudnn-cu12 into /tmp/cudnn-wheel (about 700 MB)"
      nice -n "$NICE" python3 -m pip install -q --no-deps --target /tmp/cudnn-wheel nvidia-cudnn-cu12 \
        >"$LOG_DIR/pip-cudnn.log" 2>&1 || tail -5 "$LOG_DIR/pip-cudnn.log"
    fi
    cudnn_dir="$(find_cudnn)" || cudnn_dir=""
  fi
  if [ -n "$cudnn_dir" ]; then
    # Wheels ship libcudnn.so.9 only, and the linker wants libcudnn.so. cudarc adds <root>/lib of each of
    # CUDA_ROOT and CUDNN_LIB to the link search, so the link goes into $cudnn_root/lib (RUSTFLAGS stay the
    # same, so the cuda build's artifacts, the nvcc-compiled kernels among them, are reused).
    cudnn_root="$CARGO_TARGET_DIR/cudnn-root"
    mkdir -p "$cudnn_root/lib"
    ln -sf "$(ls "$cudnn_dir"/libcudnn.so.9* | head -1)" "$cudnn_root/lib/libcudnn.so"
    say "cuDNN: $cudnn_dir (linked through $cudnn_root/lib/libcudnn.so)"
  else
    say "cuDNN: no libcudnn.so.9 found; the cuda,cudnn build is skipped"
    cudnn=0
  fi
fi

# --- 3. the builds ---------------------------------------------------------------------------------
status=0
summary=()
step() { # name, cargo args...
  local name="$1"
  shift
  local log="$LOG_DIR/$name.log" t0=$SECONDS
  say "$name: cargo $* (log: $log)"
  if nice -n "$NICE" cargo "$@" -j "$JOBS" >"$log" 2>&1; then
    summary+=("PASS $name ($((SECONDS - t0)) s)")
  else
    summary+=("FAIL $name ($((SECONDS - t0)) s)")
    status=1
    grep -E '^(error|warning: unused)' -A12 "$log" | head -80
    tail -15 "$log"
  fi
}

step build-cuda build --release -p umbra-cli --features cuda
step test-cuda-no-run test --release --workspace --features umbra-cli/cuda,umbra-nn/cuda,umbra-kernels/cuda --no-run
if [ "$cudnn" = 1 ]; then
  # cudarc's build script reruns on CUDNN_LIB; only cudarc, candle-core and their dependents rebuild
  CUDNN_LIB="$cudnn_root" step build-cuda-cudnn build --release -p umbra-cli --features cuda,cudnn
else
  summary+=("SKIP build-cuda-cudnn (no cuDNN libraries)")
fi

say "summary:"
printf '  %s\n' "${summary[@]}"
exit $status
