#!/usr/bin/env bash
# One prepared GPU check for umbra on a machine with an NVIDIA GPU: builds with `--features cuda`, runs the
# tiny-reference parity on the GPU in f32/f16/bf16, times txt2img on random SD 1.5 weights at 512² in f16
# (it/s, peak GPU memory), `bench unet --cuda` at batch 2 and the small U-Net training step, and PyTorch's /
# diffusers' numbers for the same work when torch with CUDA is importable. Writes ONE JSON report.
# Meant to finish in under 8 minutes (a warm or prebuilt build; see --budget-s). Without a GPU it says so
# and exits 3 at once, before building anything.
#
# Usage: scripts/gpu-check.sh [options]
#   --out FILE          the JSON report [$OUT/gpu-check.json when $OUT is set, else gpu-check.json]
#   --umbra BIN         use this umbra binary (built with --features cuda) instead of building one
#   --skip-build        use $CARGO_TARGET_DIR/release/umbra as it is (and the parity test binary, if built)
#   --only LIST         run only these steps (comma-separated): build,parity,txt2img,bench_unet,train_step,torch
#   --skip LIST         leave these steps out
#   --reference DIR     the tiny-sd-v1 reference [shared/reference/tiny-sd-v1, then ../shared/reference/tiny-sd-v1]
#   --shared DIR        the shared folder holding bench/torch_unet_step.py [shared, then ../shared]
#   --wheels DIR        pip-install the wheels in DIR (e.g. diffusers) into a temp folder for the torch step
#   --budget-s N        total seconds; a step that would start past it is skipped [470]
#   --steps N           txt2img denoising steps [20]
#   --dry-run           detect the GPU, print every step's command, write the report, run nothing
#   --self-test         test the argument parsing, the JSON writer and the no-GPU path; needs no GPU
#   -h, --help          this text
# Logs go to a temp folder ($GPU_CHECK_LOGS to choose it) and, archived, to gpu-check-logs.tar.gz beside the report.
# Environment: CARGO_TARGET_DIR [target/gpu-check], NVIDIA_SMI [nvidia-smi], CUDA_COMPUTE_CAP [from nvidia-smi],
# PYTHON [python3].
# Exit status: 0 every step that ran passed; 1 some step failed; 2 bad arguments; 3 no NVIDIA GPU.
set -uo pipefail

SCRIPT="$(readlink -f "$0")"
ROOT="$(dirname "$(dirname "$SCRIPT")")"
ALL_STEPS="build parity txt2img bench_unet train_step torch"

# ---------------------------------------------------------------------------------------------------
# JSON writing (bash only, so the report is written even where python is missing)
# ---------------------------------------------------------------------------------------------------
# jstr S: S as a JSON string literal.
jstr() {
  local s="$1" out="" c i code
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\r'/\\r}"
  s="${s//$'\t'/\\t}"
  # any other control character as \u00XX
  if [[ "$s" =~ [[:cntrl:]] ]]; then
    for ((i = 0; i < ${#s}; i++)); do
      c="${s:i:1}"
      if [[ "$c" =~ [[:cntrl:]] ]]; then
        printf -v code '%d' "'$c"
        printf -v c '\\u%04x' "$code"
      fi
      out+="$c"
    done
    s="$out"
  fi
  printf '"%s"' "$s"
}

# jnum V: V if it is a JSON number, else null.
jnum() {
  if [[ "$1" =~ ^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then printf '%s' "$1"; else printf 'null'; fi
}

# jobj KEY TYPE:VALUE ...: a JSON object. Types: s (string), n (number or null), b (true/false), r (raw JSON).
jobj() {
  local first=1 k v out="{"
  while [ $# -ge 2 ]; do
    k="$1" v="$2"
    shift 2
    [ $first = 1 ] || out+=", "
    first=0
    out+="$(jstr "$k"): "
    case "$v" in
      s:*) out+="$(jstr "${v#s:}")" ;;
      n:*) out+="$(jnum "${v#n:}")" ;;
      b:true | b:false) out+="${v#b:}" ;;
      r:*) out+="${v#r:}" ;;
      *) out+="$(jstr "$v")" ;;
    esac
  done
  printf '%s}' "$out"
}

# The report: one object per step, in the order they ran.
STEP_KEYS=()
STEP_VALS=()
add_step() { STEP_KEYS+=("$1"); STEP_VALS+=("$2"); }

write_report() { # status error-message gpu-json
  local status="$1" err="$2" gpu="$3" steps="{" i
  for i in "${!STEP_KEYS[@]}"; do
    [ "$i" = 0 ] || steps+=", "
    steps+="$(jstr "${STEP_KEYS[$i]}"): ${STEP_VALS[$i]}"
  done
  steps+="}"
  local commit
  commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  mkdir -p "$(dirname "$REPORT")"
  jobj schema s:umbra-gpu-check/1 status "s:$status" error "$([ -n "$err" ] && echo "s:$err" || echo r:null)" \
    started_utc "s:$STARTED" total_s "n:$((SECONDS - T0))" budget_s "n:$BUDGET" git_commit "s:$commit" \
    host "s:$(uname -srm)" gpu "r:$gpu" steps "r:$steps" >"$REPORT"
  echo >>"$REPORT"
  echo "gpu-check: report written to $REPORT (status: $status)"
}

say() { printf '[gpu-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------
usage() { sed -n '2,/^set -uo/p' "$SCRIPT" | sed '$d' | sed 's/^# \{0,1\}//'; }
bad_arg() {
  echo "gpu-check: $1 (see --help)" >&2
  exit 2
}

REPORT=""
UMBRA=""
SKIP_BUILD=0
ONLY=""
SKIP=""
REFERENCE=""
SHARED=""
WHEELS=""
BUDGET=470
TXT_STEPS=20
DRY_RUN=0
SELF_TEST=0
parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --out | --umbra | --only | --skip | --reference | --shared | --wheels | --budget-s | --steps)
        [ $# -ge 2 ] && [ -n "$2" ] || bad_arg "$1 needs a value"
        case "$1" in
          --out) REPORT="$2" ;;
          --umbra) UMBRA="$2" ;;
          --only) ONLY="${2//,/ }" ;;
          --skip) SKIP="${2//,/ }" ;;
          --reference) REFERENCE="$2" ;;
          --shared) SHARED="$2" ;;
          --wheels) WHEELS="$2" ;;
          --budget-s) BUDGET="$2" ;;
          --steps) TXT_STEPS="$2" ;;
        esac
        shift 2
        ;;
      --skip-build) SKIP_BUILD=1 && shift ;;
      --dry-run) DRY_RUN=1 && shift ;;
      --self-test) SELF_TEST=1 && shift ;;
      -h | --help) usage && exit 0 ;;
      *) bad_arg "unknown argument '$1'" ;;
    esac
  done
  [[ "$BUDGET" =~ ^[1-9][0-9]*$ ]] || bad_arg "--budget-s must be a positive whole number of seconds (got '$BUDGET')"
  [[ "$TXT_STEPS" =~ ^[1-9][0-9]*$ ]] && [ "$TXT_STEPS" -ge 2 ] ||
    bad_arg "--steps must be a whole number ≥ 2 (got '$TXT_STEPS')"
  local s
  for s in $ONLY $SKIP; do
    [[ " $ALL_STEPS " == *" $s "* ]] || bad_arg "unknown step '$s': the steps are ${ALL_STEPS// /, }"
  done
  if [ -z "$REPORT" ]; then
    if [ -n "${OUT:-}" ]; then REPORT="$OUT/gpu-check.json"; else REPORT="$ROOT/gpu-check.json"; fi
  fi
  [ -z "$UMBRA" ] || [ -x "$UMBRA" ] || bad_arg "--umbra $UMBRA: not an executable file"
}

wanted() { # STEP: should it run?
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $1 "* ]]; then return 1; fi
  [[ " $SKIP " != *" $1 "* ]]
}

# ---------------------------------------------------------------------------------------------------
# the GPU
# ---------------------------------------------------------------------------------------------------
NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"
GPU_JSON=null
detect_gpu() { # sets GPU_JSON and COMPUTE_CAP; fails without a usable NVIDIA GPU
  local line name mem driver cap
  command -v "$NVIDIA_SMI" >/dev/null 2>&1 || {
    NO_GPU_WHY="nvidia-smi not found"
    return 1
  }
  line="$("$NVIDIA_SMI" --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader,nounits \
    -i 0 2>&1)" || {
    NO_GPU_WHY="nvidia-smi failed: $(echo "$line" | head -2 | tr '\n' ' ')"
    return 1
  }
  IFS=',' read -r name mem driver cap <<<"$line"
  name="$(echo "$name" | xargs)" mem="$(echo "$mem" | xargs)" driver="$(echo "$driver" | xargs)"
  cap="$(echo "$cap" | xargs)"
  [ -n "$name" ] || {
    NO_GPU_WHY="nvidia-smi lists no GPU"
    return 1
  }
  COMPUTE_CAP="${CUDA_COMPUTE_CAP:-${cap//./}}"
  GPU_JSON="$(jobj name "s:$name" memory_total_mib "n:$mem" driver "s:$driver" compute_cap "s:$cap" \
    cuda_compute_cap_built "s:$COMPUTE_CAP")"
}

# GPU memory in use on GPU 0 (MiB), sampled every 100 ms into FILE while a step runs.
MEM_PID=""
mem_watch_start() {
  : >"$1"
  "$NVIDIA_SMI" --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$1" 2>/dev/null &
  MEM_PID=$!
}
mem_watch_stop() { # FILE BASELINE -> prints peak − baseline (MiB) or nothing
  [ -n "$MEM_PID" ] && kill "$MEM_PID" 2>/dev/null && wait "$MEM_PID" 2>/dev/null
  MEM_PID=""
  awk -v b="$2" '$1 ~ /^[0-9]+$/ { if ($1 > m) m = $1 } END { if (m != "") print m - b }' "$1"
}
mem_now() { "$NVIDIA_SMI" --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1 | xargs; }

# ---------------------------------------------------------------------------------------------------
# running steps
# ---------------------------------------------------------------------------------------------------
FAILED=0
LOGS=""
left() { echo $((BUDGET - (SECONDS - T0))); }

# run_logged NAME TIMEOUT CMD...: runs CMD with a time limit into $LOGS/NAME.log; sets RC and DT.
run_logged() {
  local name="$1" limit="$2"
  shift 2
  local log="$LOGS/$name.log" t0=$SECONDS
  say "$name: $* (limit ${limit}s, log $log)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$log" 2>&1
  RC=$?
  DT=$((SECONDS - t0))
  [ $RC = 0 ] || {
    say "$name: exit $RC after ${DT}s; last lines:"
    tail -15 "$log" | sed 's/^/    /'
  }
}

# begin_step NAME MIN_SECONDS CMD_DESCRIPTION: false (and records why) when the step is not run.
begin_step() {
  local name="$1" need="$2" cmd="$3"
  wanted "$name" || return 1
  if [ "$DRY_RUN" = 1 ]; then
    say "$name (dry run): $cmd"
    add_step "$name" "$(jobj status s:planned command "s:$cmd")"
    return 1
  fi
  if [ "$(left)" -lt "$need" ]; then
    say "$name: skipped, $(left)s of the ${BUDGET}s budget left (needs about ${need}s)"
    add_step "$name" "$(jobj status s:skipped reason "s:budget: $(left)s left, needs about ${need}s" command "s:$cmd")"
    return 1
  fi
  return 0
}

fail_or_pass() { if [ "$1" = 0 ]; then echo pass; else FAILED=1 && echo fail; fi; }

# first number after PATTERN in FILE (sed -E regex with one capture group)
grab() { sed -nE "s/$2/\\1/p" "$1" | tail -1; }

# ---------------------------------------------------------------------------------------------------
# self-test (no GPU needed)
# ---------------------------------------------------------------------------------------------------
self_test() {
  local fails=0 tmp out
  tmp="$(mktemp -d)"
  check() { # DESCRIPTION, then a command that must succeed
    local d="$1"
    shift
    if "$@"; then echo "  ok    $d"; else echo "  FAIL  $d" && fails=$((fails + 1)); fi
  }
  echo "gpu-check self-test"
  out="$(jstr $'a "quoted" back\\slash\ttab\nnewline\x01ctrl')"
  check "jstr escapes quotes, backslashes, tabs, newlines and control characters" \
    test "$out" = '"a \"quoted\" back\\slash\ttab\nnewline\u0001ctrl"'
  check "jnum passes numbers and turns the rest into null" \
    test "$(jnum 1.5e-3),$(jnum 42),$(jnum -0.25),$(jnum abc),$(jnum '')" = "1.5e-3,42,-0.25,null,null"
  out="$(jobj a s:x b n:2 c n:nope d b:true e r:'[1, 2]')"
  check "jobj builds typed objects" test "$out" = '{"a": "x", "b": 2, "c": null, "d": true, "e": [1, 2]}'
  STEP_KEYS=() STEP_VALS=()
  add_step build "$(jobj status s:pass seconds n:3 command s:'cargo build "x"')"
  add_step parity "$(jobj status s:fail results r:'[{"name": "unet.out", "max_abs_diff": 1e-5}]')"
  REPORT="$tmp/r.json" STARTED="2026-01-01T00:00:00Z" T0=$SECONDS
  write_report fail "a message with \"quotes\"" "$(jobj name s:'Fake GPU' memory_total_mib n:1000)" >/dev/null
  if command -v python3 >/dev/null 2>&1; then
    check "the report is valid JSON with the steps in order (python3 json)" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "fail" and r["gpu"]["name"] == "Fake GPU" and list(r["steps"]) == ["build", "parity"], r
assert r["steps"]["parity"]["results"][0]["max_abs_diff"] == 1e-5 and r["error"] == "a message with \"quotes\""
' "$tmp/r.json"
  else
    check "the report is one line starting with {\"schema\"" grep -q '^{"schema": "umbra-gpu-check/1"' "$tmp/r.json"
  fi
  "$SCRIPT" --frobnicate >/dev/null 2>"$tmp/e" && fails=$((fails + 1))
  check "an unknown argument exits 2 with a message" grep -q "unknown argument '--frobnicate'" "$tmp/e"
  "$SCRIPT" --only build,nonsense >/dev/null 2>"$tmp/e"
  check "an unknown step is refused (exit 2)" test $? = 2 -a -n "$(grep "unknown step 'nonsense'" "$tmp/e")"
  "$SCRIPT" --budget-s 0 >/dev/null 2>"$tmp/e"
  check "--budget-s 0 is refused (exit 2)" test $? = 2
  "$SCRIPT" --steps >/dev/null 2>"$tmp/e"
  check "an option without its value is refused (exit 2)" test $? = 2
  local t1=$SECONDS
  NVIDIA_SMI="$tmp/no-such-nvidia-smi" "$SCRIPT" --out "$tmp/nogpu.json" >"$tmp/o" 2>&1
  local rc=$?
  check "without a GPU: exit 3" test $rc = 3
  check "without a GPU: says 'no NVIDIA GPU'" grep -q 'no NVIDIA GPU' "$tmp/o"
  check "without a GPU: returns at once (no build)" test $((SECONDS - t1)) -lt 10
  check "without a GPU: the report says status no_gpu" grep -q '"status": "no_gpu"' "$tmp/nogpu.json"
  # a fake nvidia-smi: the dry run detects it, plans every step and runs nothing
  cat >"$tmp/fake-smi" <<'EOF'
#!/bin/sh
case "$*" in
  *memory.used*) echo 1234 ;;
  *) echo "NVIDIA H200, 143771, 580.159.04, 9.0" ;;
esac
EOF
  chmod +x "$tmp/fake-smi"
  NVIDIA_SMI="$tmp/fake-smi" "$SCRIPT" --dry-run --skip torch --out "$tmp/dry.json" >"$tmp/o" 2>&1
  check "dry run with a (fake) GPU: exit 0" test $? = 0
  check "dry run: the GPU and its compute capability 90 are in the report" \
    grep -q '"name": "NVIDIA H200".*"cuda_compute_cap_built": "90"' "$tmp/dry.json"
  check "dry run: build, parity, txt2img, bench_unet and train_step planned; torch left out" \
    test "$(grep -o '"status": "planned"' "$tmp/dry.json" | wc -l)" = 6 -a -z "$(grep '"torch"' "$tmp/dry.json")"
  if command -v python3 >/dev/null 2>&1; then
    check "dry run and no-GPU reports are valid JSON" python3 -c '
import json, sys
for p in sys.argv[1:]:
    json.load(open(p))' "$tmp/dry.json" "$tmp/nogpu.json"
  fi
  # a fake umbra that prints what the real subcommands print: the parsing of every figure
  cat >"$tmp/fake-umbra" <<'EOF'
#!/bin/sh
case "$2" in
  txt2img) printf '%s\n' "built in 1.5 s" "text encode + step 1: 0.500 s" \
    "steps 2..20: 1.900 s = 10.00 it/s (100.0 ms per step)" "VAE decode: 0.200 s" "total: 2.600 s for 1 image(s)" ;;
  unet) printf '%s\n' "  evaluation 0: 0.900 s" "  evaluation 1: 0.050 s" \
    "UNet Sd15 at 512x512 (latent 64x64), batch 2: mean 0.150 s, min 0.050 s per evaluation" ;;
  train-step) printf '%s\n' "MODEL [Fast] median step ms: 12.5 (min 11.0; median process CPU ms per step 12)" \
    "[Fast] forward (sampling) batch 64: median 3.2 ms = 20000.0 images/s" ;;
esac
EOF
  chmod +x "$tmp/fake-umbra"
  NVIDIA_SMI="$tmp/fake-smi" GPU_CHECK_LOGS="$tmp/logs" "$SCRIPT" --umbra "$tmp/fake-umbra" \
    --only txt2img,bench_unet,train_step --out "$tmp/run.json" >"$tmp/o" 2>&1
  check "a run with a fake GPU and a fake umbra: exit 0" test $? = 0
  if command -v python3 >/dev/null 2>&1; then
    check "every figure is parsed from umbra's output" python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); s = r["steps"]
assert r["status"] == "pass" and list(s) == ["txt2img", "bench_unet", "train_step"], r
t = s["txt2img"]
assert (t["it_per_s"], t["ms_per_step"], t["text_encode_and_first_step_s"], t["vae_decode_s"], t["total_s"],
        t["build_s"], t["peak_gpu_mem_mib"]) == (10.0, 100.0, 0.5, 0.2, 2.6, 1.5, 0), t
u = s["bench_unet"]
assert (u["mean_s"], u["min_s"], u["first_eval_s"]) == (0.15, 0.05, 0.9), u
m = s["train_step"]
assert (m["median_step_ms"], m["min_step_ms"], m["sampling_images_per_s"]) == (12.5, 11.0, 20000.0), m
' "$tmp/run.json"
  fi
  check "the logs are archived beside the report" test -s "$tmp/gpu-check-logs.tar.gz"
  rm -rf "$tmp"
  if [ $fails = 0 ]; then echo "self-test: all passed"; else echo "self-test: $fails failed"; fi
  [ $fails = 0 ]
}

# ---------------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------------
step_build() {
  local cmd="cargo build --release -p umbra-cli --features cuda && cargo test --release -p umbra-nn --features cuda --test cuda_parity --no-run"
  wanted build || return
  if [ -n "$UMBRA" ]; then
    add_step build "$(jobj status s:skipped reason "s:--umbra $UMBRA given")"
    return
  fi
  if [ "$SKIP_BUILD" = 1 ]; then
    add_step build "$(jobj status s:skipped reason s:--skip-build)"
    return
  fi
  begin_step build 60 "$cmd" || return
  if ! command -v cargo >/dev/null 2>&1; then
    FAILED=1
    say "build: cargo not found; pass --umbra BIN (built with --features cuda elsewhere)"
    add_step build "$(jobj status s:fail reason "s:cargo not found: install Rust, or pass --umbra BIN built with --features cuda" command "s:$cmd")"
    return
  fi
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="$PATH:/usr/local/cuda/bin"; fi
  # candle-kernels' builder makes a bare 90 into 90a, which needs nvcc >= 12; older nvcc builds PTX for 89,
  # which the driver JIT-compiles for the GPU (see scripts/cuda-build-check.sh)
  local rel
  rel="$(nvcc --version 2>/dev/null | grep -o 'release [0-9]*' | grep -o '[0-9]*$')"
  if [ -n "$rel" ] && [ "$rel" -lt 12 ] && [ "${COMPUTE_CAP:-0}" -ge 90 ] 2>/dev/null; then
    say "build: nvcc $rel cannot target ${COMPUTE_CAP}a; building for 89 (PTX, JIT-compiled by the driver)"
    COMPUTE_CAP=89
  fi
  local limit
  limit="$(left)"
  # one cargo call per artifact; the second reuses the first's dependencies
  run_logged build "$limit" bash -c "cd '$ROOT' && CUDA_COMPUTE_CAP=$COMPUTE_CAP cargo build --release -p umbra-cli --features cuda && \
    CUDA_COMPUTE_CAP=$COMPUTE_CAP cargo test --release -p umbra-nn --features cuda --test cuda_parity --no-run"
  local st
  st="$(fail_or_pass $RC)"
  add_step build "$(jobj status "s:$st" seconds "n:$DT" exit_code "n:$RC" command "s:$cmd" log "s:$LOGS/build.log" \
    nvcc "s:$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not on PATH')")"
}

# The parity test binary that the build step compiled (newest cuda_parity-* executable).
parity_binary() {
  find "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -type f -name 'cuda_parity-*' -perm -u+x 2>/dev/null |
    xargs -r ls -t 2>/dev/null | head -1
}

step_parity() {
  local cmd="cuda_parity test binary (cargo test --release -p umbra-nn --features cuda --test cuda_parity -- --nocapture --test-threads 1)"
  begin_step parity 30 "$cmd" || return
  local bin
  bin="$(parity_binary)"
  if [ -z "$bin" ]; then
    FAILED=1
    add_step parity "$(jobj status s:fail reason "s:no cuda_parity test binary under $CARGO_TARGET_DIR/release/deps: run the build step (cargo and the sources are needed)")"
    return
  fi
  if [ -z "$REFERENCE" ]; then
    FAILED=1
    add_step parity "$(jobj status s:fail reason "s:the tiny-sd-v1 reference was not found: pass --reference DIR (copy ../shared/reference/tiny-sd-v1 into the repo's shared/ to carry it)")"
    return
  fi
  run_logged parity "$(($(left) < 180 ? $(left) : 180))" env UMBRA_TINY_SD_REFERENCE="$REFERENCE" "$bin" --nocapture --test-threads 1
  local results passed failed st
  results="[$(sed -n 's/^GPUCHECK //p' "$LOGS/parity.log" | paste -sd, -)]"
  passed="$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOGS/parity.log" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')"
  failed="$(grep -oE '[0-9]+ failed' "$LOGS/parity.log" | tail -1 | grep -oE '[0-9]+')"
  if grep -q '^SKIPPED' "$LOGS/parity.log"; then RC=1; fi # a skip on the GPU machine is a failure
  st="$(fail_or_pass $RC)"
  add_step parity "$(jobj status "s:$st" seconds "n:$DT" tests_passed "n:$passed" tests_failed "n:$failed" \
    tolerances "r:{\"f32\": 1e-4, \"f16\": 2e-2, \"bf16\": 1e-1, \"vae\": \"f32 under force_upcast, 1e-4\"}" \
    results "r:$results" log "s:$LOGS/parity.log")"
}

step_txt2img() {
  local args=(bench txt2img --arch sd15 --res 512 --steps "$TXT_STEPS" --cuda --dtype f16 --out "$LOGS/txt2img.png")
  begin_step txt2img 60 "umbra ${args[*]}" || return
  local base peak st
  base="$(mem_now)"
  mem_watch_start "$LOGS/txt2img.mem"
  run_logged txt2img "$(($(left) < 240 ? $(left) : 240))" "$UMBRA_BIN" "${args[@]}"
  peak="$(mem_watch_stop "$LOGS/txt2img.mem" "${base:-0}")"
  local f="$LOGS/txt2img.log"
  st="$(fail_or_pass $RC)"
  add_step txt2img "$(jobj status "s:$st" seconds "n:$DT" command "s:umbra ${args[*]}" \
    it_per_s "n:$(grab "$f" '.* = ([0-9.]+) it\/s.*')" ms_per_step "n:$(grab "$f" '.*\(([0-9.]+) ms per step\).*')" \
    text_encode_and_first_step_s "n:$(grab "$f" '^text encode \+ step 1: ([0-9.]+) s.*')" \
    vae_decode_s "n:$(grab "$f" '^VAE decode: ([0-9.]+) s.*')" total_s "n:$(grab "$f" '^total: ([0-9.]+) s.*')" \
    build_s "n:$(grab "$f" '^built in ([0-9.]+) s.*')" peak_gpu_mem_mib "n:$peak" gpu_mem_baseline_mib "n:$base" \
    log "s:$f")"
}

step_bench_unet() {
  local args=(bench unet --arch sd15 --res 512 --batch 2 --steps 10 --cuda --dtype f16)
  begin_step bench_unet 45 "umbra ${args[*]}" || return
  local base peak st f="$LOGS/bench_unet.log"
  base="$(mem_now)"
  mem_watch_start "$LOGS/bench_unet.mem"
  run_logged bench_unet "$(($(left) < 180 ? $(left) : 180))" "$UMBRA_BIN" "${args[@]}"
  peak="$(mem_watch_stop "$LOGS/bench_unet.mem" "${base:-0}")"
  st="$(fail_or_pass $RC)"
  # the first evaluation includes cuBLAS/kernel warm-up; min is the steady state
  add_step bench_unet "$(jobj status "s:$st" seconds "n:$DT" command "s:umbra ${args[*]}" \
    mean_s "n:$(grab "$f" '.*: mean ([0-9.]+) s, min.*')" min_s "n:$(grab "$f" '.*, min ([0-9.]+) s per evaluation.*')" \
    first_eval_s "n:$(grab "$f" '^ *evaluation 0: ([0-9.]+) s.*')" peak_gpu_mem_mib "n:$peak" log "s:$f")"
}

step_train_step() {
  local args=(bench train-step --cuda --iters 20 --warmup 3 --batch 64 --sample-iters 10)
  begin_step train_step 30 "umbra ${args[*]}" || return
  local st f="$LOGS/train_step.log"
  run_logged train_step "$(($(left) < 120 ? $(left) : 120))" "$UMBRA_BIN" "${args[@]}"
  st="$(fail_or_pass $RC)"
  add_step train_step "$(jobj status "s:$st" seconds "n:$DT" command "s:umbra ${args[*]}" \
    median_step_ms "n:$(grab "$f" '.*median step ms: ([0-9.]+).*')" \
    min_step_ms "n:$(grab "$f" '.*median step ms: [0-9.]+ \(min ([0-9.]+).*')" \
    sampling_images_per_s "n:$(grab "$f" '.* = ([0-9.]+) images\/s.*')" log "s:$f")"
}

# PyTorch / diffusers on the same work; prints one TORCHCHECK {json} line per measurement.
TORCH_PY='
import json, math, os, statistics, subprocess, sys, threading, time
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
dev = torch.device("cuda")
steps = int(os.environ["GPU_CHECK_STEPS"])
def out(**kv):
    print("TORCHCHECK " + json.dumps(kv), flush=True)
def sync_time(fn, n, warm=1):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return ts
out(what="env", torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0))
try:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    have_diffusers = True
except Exception as e:
    have_diffusers = False
    out(what="diffusers", status="skipped", reason="diffusers not importable: %s (carry its wheel: --wheels DIR)" % e)
if have_diffusers:
    import diffusers
    UNET = dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
                cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                in_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=4, sample_size=64,
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    VAE = dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
               in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
               sample_size=512, up_block_types=["UpDecoderBlock2D"] * 4, force_upcast=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval().to(dev, torch.float16)
    x = torch.randn(2, 4, 64, 64, device=dev, dtype=torch.float16)
    ctx = torch.randn(2, 77, 768, device=dev, dtype=torch.float16)
    t = torch.tensor([500, 500], device=dev)
    with torch.inference_mode():
        torch.cuda.reset_peak_memory_stats()
        ts = sync_time(lambda: unet(x, t, encoder_hidden_states=ctx).sample, 10)
    out(what="unet", diffusers=diffusers.__version__, batch=2, res=512, dtype="f16", mean_s=statistics.mean(ts),
        min_s=min(ts), peak_alloc_mib=torch.cuda.max_memory_allocated() / 2**20)
    # txt2img: the same loop as StableDiffusionPipeline (text embeddings from a random CLIP text model when
    # transformers is there, DDIM, guidance 7.5 on a batch of 2, VAE decode in f32 as force_upcast does)
    vae = AutoencoderKL(**VAE).eval().to(dev, torch.float32)
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                          hidden_act="quick_gelu")).eval().to(dev, torch.float16)
    except Exception:
        te = None
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    stamps = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        if te is not None:
            ids = torch.randint(0, 49407, (2, 77), device=dev)
            emb = te(ids).last_hidden_state
        else:
            emb = ctx
        sched.set_timesteps(steps)
        lat = torch.randn(1, 4, 64, 64, device=dev, dtype=torch.float16) * sched.init_noise_sigma
        for tt in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([lat] * 2), tt)
            e = unet(inp, tt, encoder_hidden_states=emb).sample
            eu, ec = e.chunk(2)
            lat = sched.step(eu + 7.5 * (ec - eu), tt, lat).prev_sample
            torch.cuda.synchronize(); stamps.append(time.perf_counter())
        img = vae.decode(lat.float() / 0.18215).sample
        torch.cuda.synchronize(); t1 = time.perf_counter()
    loop = stamps[-1] - stamps[0]
    out(what="txt2img", diffusers=diffusers.__version__, res=512, steps=steps, dtype="f16 (VAE f32)",
        it_per_s=(steps - 1) / loop, ms_per_step=loop * 1e3 / (steps - 1), total_s=t1 - t0,
        vae_decode_s=t1 - stamps[-1], text_encoder=te is not None,
        peak_alloc_mib=torch.cuda.max_memory_allocated() / 2**20, finite=bool(torch.isfinite(img).all()))
    del unet, vae, te
    torch.cuda.empty_cache()
bench = os.environ.get("GPU_CHECK_BENCH_DIR", "")
if bench and os.path.isfile(os.path.join(bench, "torch_unet_step.py")):
    sys.path.insert(0, bench)
    import torch_unet_step as tus
    torch.set_num_threads(os.cpu_count() or 1)
    import torch.nn.functional as F
    torch.manual_seed(0)
    m = tus.UNet().to(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)
    xb = torch.randn(64, 1, 32, 32, device=dev); tgt = torch.randn(64, 1, 32, 32, device=dev)
    tb = torch.randint(0, 1000, (64,), device=dev).float()
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(m(xb, tb), tgt); loss.backward(); opt.step()
    ts = sync_time(step, 20, warm=3)
    with torch.inference_mode():
        fs = sync_time(lambda: m(xb, tb), 10)
    out(what="train_step", params=sum(p.numel() for p in m.parameters()), batch=64,
        median_step_ms=statistics.median(ts) * 1e3, min_step_ms=min(ts) * 1e3,
        sampling_images_per_s=64 / statistics.median(fs))
else:
    out(what="train_step", status="skipped", reason="torch_unet_step.py not found (--shared DIR)")
'

step_torch() {
  local py="${PYTHON:-python3}"
  begin_step torch 60 "$py (inline): diffusers SD 1.5 UNet batch 2, txt2img loop ${TXT_STEPS} steps, torch_unet_step train step" || return
  if ! command -v "$py" >/dev/null 2>&1 || ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    add_step torch "$(jobj status s:skipped reason "s:torch with CUDA is not importable by $py")"
    return
  fi
  local pp="${PYTHONPATH:-}"
  if [ -n "$WHEELS" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$LOGS/site" "$WHEELS"/*.whl \
      >"$LOGS/wheels.log" 2>&1 && pp="$LOGS/site${pp:+:$pp}"
  fi
  local bench=""
  [ -n "$SHARED" ] && [ -f "$SHARED/bench/torch_unet_step.py" ] && bench="$SHARED/bench"
  run_logged torch "$(($(left) < 200 ? $(left) : 200))" env PYTHONPATH="$pp" PYTHONUNBUFFERED=1 \
    GPU_CHECK_STEPS="$TXT_STEPS" GPU_CHECK_BENCH_DIR="$bench" "$py" -c "$TORCH_PY"
  local results st
  results="[$(sed -n 's/^TORCHCHECK //p' "$LOGS/torch.log" | paste -sd, - | sed 's/},{/}, {/g')]"
  # torch's numbers are for comparison: a failure here does not fail umbra's check
  st=pass
  [ $RC = 0 ] || st=fail
  add_step torch "$(jobj status "s:$st" seconds "n:$DT" counts_toward_status b:false results "r:$results" log "s:$LOGS/torch.log")"
}

# ---------------------------------------------------------------------------------------------------
main() {
  parse_args "$@"
  if [ "$SELF_TEST" = 1 ]; then
    self_test
    exit $?
  fi
  T0=$SECONDS
  STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  NO_GPU_WHY=""
  if ! detect_gpu; then
    echo "gpu-check: no NVIDIA GPU found ($NO_GPU_WHY); nothing was built or run. Run this on a machine with an NVIDIA GPU and its driver (nvidia-smi must work)." >&2
    write_report no_gpu "no NVIDIA GPU: $NO_GPU_WHY" null
    exit 3
  fi
  say "GPU: $GPU_JSON"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/gpu-check}"
  # Logs live outside $OUT (whose files come back only a few at a time); one archive of them goes next to the report.
  LOGS="${GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-logs.XXXXXX")}"
  mkdir -p "$LOGS"
  if [ -z "$REFERENCE" ]; then
    for d in "$ROOT/shared/reference/tiny-sd-v1" "$ROOT/../shared/reference/tiny-sd-v1"; do
      [ -f "$d/reference.safetensors" ] && REFERENCE="$(readlink -f "$d")" && break
    done
  fi
  if [ -z "$SHARED" ]; then
    for d in "$ROOT/shared" "$ROOT/../shared"; do
      [ -d "$d/bench" ] && SHARED="$(readlink -f "$d")" && break
    done
  fi
  trap '[ -n "$MEM_PID" ] && kill "$MEM_PID" 2>/dev/null' EXIT

  step_build
  UMBRA_BIN="${UMBRA:-$CARGO_TARGET_DIR/release/umbra}"
  if [ "$DRY_RUN" = 0 ] && [ ! -x "$UMBRA_BIN" ]; then
    say "no umbra binary at $UMBRA_BIN: the umbra steps fail"
  fi
  step_parity
  local s
  for s in txt2img bench_unet train_step; do
    if [ "$DRY_RUN" = 0 ] && wanted "$s" && [ ! -x "$UMBRA_BIN" ]; then
      FAILED=1
      add_step "$s" "$(jobj status s:fail reason "s:no umbra binary at $UMBRA_BIN (build step failed or skipped)")"
      continue
    fi
    "step_$s"
  done
  step_torch

  local status=pass
  [ "$DRY_RUN" = 1 ] && status=planned
  [ "$FAILED" = 1 ] && status=fail
  write_report "$status" "" "$GPU_JSON"
  if [ "$DRY_RUN" = 0 ]; then
    tar -czf "$(dirname "$REPORT")/gpu-check-logs.tar.gz" -C "$LOGS" --exclude=./site . 2>/dev/null &&
      echo "gpu-check: logs in $(dirname "$REPORT")/gpu-check-logs.tar.gz (and $LOGS)"
  fi
  [ "$FAILED" = 0 ]
}

main "$@"
