#!/usr/bin/env bash
# edgevit_jetson.sh: build and benchmark an edgevit TensorRT artifact ON a Jetson board
# (JetPack 6, TensorRT 10), then write the device-results JSON that `edgevit report RUN
# --device-results FILE` puts into the run's report. See deploy/jetson/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUMMARIZE="$SCRIPT_DIR/summarize.py"
PYTHON=${PYTHON:-python3}
COMMAND_LINE=$(printf '%q ' "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }

ARTIFACT="" OUT="" POWER_MODE="" CLOCKS=0 BATCH=1 DURATION=20 ITERATIONS=10 WARMUP_MS=2000 SPIN_WAIT=1
WORKDIR="" TRTEXEC="" DRY_RUN=0 TEGRA_PID=""

usage() {
    cat <<'EOF'
Usage: edgevit_jetson.sh --artifact DIR [options]

Build a TensorRT engine on this Jetson from an edgevit artifact (artifacts/tensorrt-int8 or
tensorrt-fp16: model.onnx + manifest.json), with engine.json beside it, benchmark it with trtexec
for a fixed duration while tegrastats logs power, GPU load and temperatures, and write the
device-results JSON (latency, throughput, power, energy per image).

Options:
  --artifact DIR      the artifact directory copied from the export machine (required)
  --out FILE.json     where to write the results (default: ./jetson-<target>.json)
  --power-mode N      run `sudo nvpmodel -m N` first (0 is MAXN on Orin; list: nvpmodel -q --verbose)
  --clocks            run `sudo jetson_clocks` first (clocks pinned at their maximum until reboot)
  --batch B           benchmark batch size (default 1); the engine is built for it: its profile's
                      opt batch is B and its max batch at least B
  --duration S        measure for S seconds (default 20): long enough for tegrastats' power samples
  --iterations N      measure at least N inferences, even past --duration (default 10)
  --warmup-ms MS      trtexec warm-up before measuring (default 2000)
  --no-spin-wait      let trtexec block on GPU events instead of spinning (--useSpinWait, the default,
                      steadies latencies but keeps a CPU core busy, which the power figures include)
  --workdir DIR       where the engine, timing cache and logs go (default ./edgevit-jetson-<target>;
                      keep it between runs so the timing cache makes rebuilds fast)
  --trtexec PATH      trtexec binary (default /usr/src/tensorrt/bin/trtexec, else the one on PATH)
  --dry-run           print every command (prefixed "+ ") without building, benchmarking or
                      changing the device's power mode or clocks
  -h, --help          this help
EOF
}

die() {  # die WHAT [FIX]: one line saying what is wrong, one saying what to do, exit 2
    printf 'edgevit_jetson.sh: error: %s\n' "$1" >&2
    if [[ -n ${2:-} ]]; then printf '  fix: %s\n' "$2" >&2; fi
    exit 2
}

note() { printf 'edgevit_jetson.sh: %s\n' "$*" >&2; }

dry() { [[ $DRY_RUN -eq 1 ]]; }

show() { printf '+'; printf ' %q' "$@"; printf '\n'; }

show_bg() { printf '+'; printf ' %q' "$@"; printf ' &\n'; }

run() {  # run CMD...: print it in a dry run, run it otherwise
    if dry; then show "$@"; else "$@"; fi
}

as_root() {
    if [[ $EUID -eq 0 ]]; then run "$@"; else run sudo "$@"; fi
}

run_logged() {  # run_logged DIR LOG CMD...: run CMD in DIR, its output to the terminal and LOG
    local dir=$1 log=$2
    shift 2
    if dry; then
        printf '+ (cd %q &&' "$dir"; printf ' %q' "$@"; printf ') 2>&1 | tee %q\n' "$log"
    else
        (cd "$dir" && "$@") 2>&1 | tee "$log"
    fi
}

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value" "see edgevit_jetson.sh --help"; }

need_int() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a whole number, got '$2'" "e.g. $1 ${3:-1}"; }

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
            --artifact) need_value "$@"; ARTIFACT=$2; shift ;;
            --out) need_value "$@"; OUT=$2; shift ;;
            --power-mode) need_value "$@"; need_int "$1" "$2" 0; POWER_MODE=$2; shift ;;
            --clocks) CLOCKS=1 ;;
            --batch) need_value "$@"; need_int "$1" "$2" 1; BATCH=$2; shift ;;
            --duration) need_value "$@"; need_int "$1" "$2" 20; DURATION=$2; shift ;;
            --iterations) need_value "$@"; need_int "$1" "$2" 10; ITERATIONS=$2; shift ;;
            --warmup-ms) need_value "$@"; need_int "$1" "$2" 2000; WARMUP_MS=$2; shift ;;
            --workdir) need_value "$@"; WORKDIR=$2; shift ;;
            --trtexec) need_value "$@"; TRTEXEC=$2; shift ;;
            --no-spin-wait) SPIN_WAIT=0 ;;
            --dry-run) DRY_RUN=1 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument '$1'" "see edgevit_jetson.sh --help" ;;
        esac
        shift
    done
    [[ -n $ARTIFACT ]] || die "no --artifact given" \
        "pass the artifact directory copied from the export machine: --artifact artifacts/tensorrt-int8"
    [[ $BATCH -ge 1 && $ITERATIONS -ge 1 && $DURATION -ge 1 ]] \
        || die "--batch, --duration and --iterations must be at least 1" "e.g. --batch 1 --duration 20"
}

check_artifact() {
    [[ -d $ARTIFACT ]] || die "artifact directory $ARTIFACT does not exist" \
        "copy it from the export machine: scp -r HOST:RUN/artifacts/tensorrt-int8 ."
    ARTIFACT=$(cd "$ARTIFACT" && pwd)
    local f
    for f in model.onnx manifest.json; do
        [[ -f $ARTIFACT/$f ]] || die "$ARTIFACT has no $f: not a complete edgevit artifact" \
            "copy the whole directory written by \`edgevit export --target tensorrt-int8\` (or tensorrt-fp16)"
    done
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (needed to read the manifest)" \
        "sudo apt install python3"
}

find_trtexec() {
    if [[ -z $TRTEXEC ]]; then
        if [[ -x /usr/src/tensorrt/bin/trtexec ]]; then TRTEXEC=/usr/src/tensorrt/bin/trtexec
        elif command -v trtexec >/dev/null; then TRTEXEC=$(command -v trtexec)
        else TRTEXEC=/usr/src/tensorrt/bin/trtexec; fi
    fi
    if [[ ! -x $TRTEXEC ]] && ! command -v "$TRTEXEC" >/dev/null; then
        if dry; then note "trtexec not found at $TRTEXEC (dry run: going on)"; return; fi
        die "trtexec not found at $TRTEXEC" \
            "install TensorRT's tools with \`sudo apt install nvidia-jetpack\` (or tensorrt), or pass --trtexec PATH"
    fi
}

pkg_version() {  # first installed version of the named Debian packages, without the -1+cudaX suffix
    local p v
    command -v dpkg-query >/dev/null || return 0
    for p in "$@"; do
        v=$(dpkg-query -W -f="\${Version}" "$p" 2>/dev/null || true)
        if [[ -n $v ]]; then printf '%s\n' "${v%%-*}"; return 0; fi
    done
}

detect_device() {
    DEVICE_MODEL=unknown L4T="" JETPACK="" TRT_VERSION="" GPU_NAME=""
    if [[ -r /proc/device-tree/model ]]; then DEVICE_MODEL=$(tr -d '\0' </proc/device-tree/model); fi
    if [[ $DEVICE_MODEL != unknown ]]; then GPU_NAME=$DEVICE_MODEL
    elif command -v nvidia-smi >/dev/null; then
        GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
    fi
    if [[ -r /etc/nv_tegra_release ]]; then
        L4T=$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\),.*/\1.\2/p' /etc/nv_tegra_release)
    fi
    JETPACK=$(pkg_version nvidia-jetpack)
    TRT_VERSION=$(pkg_version tensorrt libnvinfer10 libnvinfer8)
    note "device: $DEVICE_MODEL, L4T ${L4T:-?}, JetPack ${JETPACK:-?}, TensorRT ${TRT_VERSION:-?}"
    [[ $DEVICE_MODEL == unknown ]] && note "no /proc/device-tree/model: this does not look like a Jetson"
    return 0
}

query_power_mode() {  # sets POWER_MODE_NAME and POWER_MODE_ID from `nvpmodel -q` (empty if unavailable)
    local q=""
    POWER_MODE_NAME="" POWER_MODE_ID=""
    command -v nvpmodel >/dev/null || return 0
    q=$(nvpmodel -q 2>/dev/null || true)
    POWER_MODE_NAME=$(awk '/^NV Power Mode:/ { sub(/^NV Power Mode: */, ""); print; exit }' <<<"$q")
    POWER_MODE_ID=$(awk '/^[0-9]+$/ { id = $0 } END { print id }' <<<"$q")
}

set_power() {  # optional nvpmodel / jetson_clocks; records whether each was applied
    POWER_APPLIED=0 CLOCKS_APPLIED=0
    if [[ -n $POWER_MODE ]]; then
        command -v nvpmodel >/dev/null || dry || die "--power-mode: nvpmodel not found" \
            "it ships with L4T (nvidia-l4t-nvpmodel); run without --power-mode"
        as_root nvpmodel -m "$POWER_MODE" </dev/null || die "sudo nvpmodel -m $POWER_MODE failed" \
            "list this module's modes with \`nvpmodel -q --verbose\` and pick one of its ids"
        query_power_mode
        if [[ $POWER_MODE_ID == "$POWER_MODE" ]]; then POWER_APPLIED=1
        elif ! dry; then
            note "WARNING: power mode is still '${POWER_MODE_NAME:-?}' (${POWER_MODE_ID:-?}), not $POWER_MODE:" \
                "if nvpmodel asked for a reboot, reboot and run this again"
        fi
    fi
    if [[ $CLOCKS -eq 1 ]]; then
        command -v jetson_clocks >/dev/null || dry || die "--clocks: jetson_clocks not found" \
            "it ships with L4T (nvidia-l4t-tools); run without --clocks"
        as_root jetson_clocks || die "sudo jetson_clocks failed" "run it by hand to see why, or drop --clocks"
        CLOCKS_APPLIED=1
    fi
    query_power_mode
    note "power mode: ${POWER_MODE_NAME:-unknown} (${POWER_MODE_ID:-?}), jetson_clocks: $([[ $CLOCKS_APPLIED -eq 1 ]] && echo on || echo 'not set here')"
}

read_manifest() {  # BUILD_ARGS, ENGINE, SHAPES, TARGET from the manifest (summarize.py reads the JSON)
    local args  # the build flags: --skipInference, and the profile's opt batch = the benchmark batch
    args=$("$PYTHON" "$SUMMARIZE" build-args "$ARTIFACT/manifest.json" "$BATCH") || die "cannot read $ARTIFACT/manifest.json" \
        "copy the artifact directory again; the message above says what is wrong"
    mapfile -t BUILD_ARGS <<<"$args"
    SHAPES=$("$PYTHON" "$SUMMARIZE" bench-shape "$ARTIFACT/manifest.json" "$BATCH") || exit 2
    TARGET=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["target"])' "$ARTIFACT/manifest.json")
    ENGINE=model.plan
    local a
    for a in "${BUILD_ARGS[@]}"; do
        if [[ $a == --saveEngine=* ]]; then ENGINE=${a#--saveEngine=}; fi
    done
}

prepare_workdir() {
    WORKDIR=${WORKDIR:-$PWD/edgevit-jetson-$TARGET}
    OUT=${OUT:-$PWD/jetson-$TARGET.json}
    [[ $WORKDIR == /* ]] || WORKDIR=$PWD/$WORKDIR
    [[ $OUT == /* ]] || OUT=$PWD/$OUT
    run mkdir -p "$WORKDIR"
    run cp "$ARTIFACT/model.onnx" "$WORKDIR/model.onnx"
    local f
    for f in "$ARTIFACT"/*.data "$ARTIFACT"/*.onnx_data; do  # external weights of large models
        if [[ -f $f ]]; then run cp "$f" "$WORKDIR/"; fi
    done
    run rm -f "$WORKDIR/$ENGINE" "$WORKDIR/engine.json" "$WORKDIR/times.json" "$WORKDIR/tegrastats.log"
}

build_engine() {  # build only (--skipInference is in BUILD_ARGS): the time is the build's alone
    local t0 t1
    note "building the engine for batch $BATCH in $WORKDIR (minutes on the first run; the timing cache speeds up the next)"
    t0=$(date +%s.%N)
    run_logged "$WORKDIR" "$WORKDIR/build.log" "$TRTEXEC" "${BUILD_ARGS[@]}" \
        || die "trtexec could not build the engine (log: $WORKDIR/build.log)" \
            "read the last lines of the log; a TensorRT older than 10 may not know --stronglyTyped"
    t1=$(date +%s.%N)
    BUILD_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    if ! dry; then
        local v
        v=$(awk -F'TensorRT version: ' 'NF > 1 { split($2, p, " "); print p[1]; exit }' "$WORKDIR/build.log")
        TRT_VERSION=${v:-$TRT_VERSION}
        if [[ -z $GPU_NAME ]]; then  # neither a device-tree model nor nvidia-smi: the GPU trtexec selected
            GPU_NAME=$(awk -F'Selected Device: ' 'NF > 1 { sub(/[[:space:]]+$/, "", $2); print $2; exit }' \
                "$WORKDIR/build.log")
        fi
        [[ -s $WORKDIR/$ENGINE ]] || die "trtexec finished but wrote no $WORKDIR/$ENGINE" "see $WORKDIR/build.log"
    fi
    write_engine_json
}

write_engine_json() {  # engine.json beside the engine: edgevit's TensorRT loader reads it when it is there
    local meta
    meta=$(dirname "$WORKDIR/$ENGINE")
    run "$PYTHON" "$SUMMARIZE" engine-json --manifest "$ARTIFACT/manifest.json" --onnx "$ARTIFACT/model.onnx" \
        --engine "$WORKDIR/$ENGINE" --batch "$BATCH" --build-s "$BUILD_S" --tensorrt "$TRT_VERSION" \
        --gpu "$GPU_NAME" --out "$meta/engine.json" || die "could not write $meta/engine.json" "see the message above"
}

start_tegrastats() {
    TEGRA_LOG=$WORKDIR/tegrastats.log
    if ! command -v tegrastats >/dev/null; then
        note "tegrastats not found: power, GPU load and temperatures will be null (it ships with L4T)"
        TEGRA_LOG=""
        if dry; then show_bg tegrastats --interval 100 --logfile "$WORKDIR/tegrastats.log"; fi
        return 0
    fi
    if dry; then show_bg tegrastats --interval 100 --logfile "$TEGRA_LOG"; return 0; fi
    tegrastats --interval 100 --logfile "$TEGRA_LOG" &
    TEGRA_PID=$!
}

kill_tegrastats() {  # also the EXIT trap: tegrastats never outlives the script, on error or Ctrl-C
    if [[ -n $TEGRA_PID ]]; then
        kill "$TEGRA_PID" 2>/dev/null || true
        wait "$TEGRA_PID" 2>/dev/null || true
        TEGRA_PID=""
    fi
}

stop_tegrastats() {
    if dry; then printf '+ kill %s\n' "\$TEGRASTATS_PID"; else kill_tegrastats; fi
}

benchmark() {
    start_tegrastats
    WINDOW_START=$(date +%s.%N)
    local flags=("--loadEngine=$ENGINE" "--shapes=$SHAPES" "--warmUp=$WARMUP_MS" "--duration=$DURATION"
        "--iterations=$ITERATIONS" --exportTimes=times.json)
    if [[ $SPIN_WAIT -eq 1 ]]; then flags+=(--useSpinWait); fi
    note "benchmarking for ${DURATION}s after a ${WARMUP_MS} ms warm-up (tegrastats samples power meanwhile)"
    run_logged "$WORKDIR" "$WORKDIR/bench.log" "$TRTEXEC" "${flags[@]}" \
        || die "the trtexec benchmark failed (log: $WORKDIR/bench.log)" "read the last lines of the log"
    WINDOW_END=$(date +%s.%N)
    stop_tegrastats
}

summarize() {
    local cmd=("$PYTHON" "$SUMMARIZE" summarize --manifest "$ARTIFACT/manifest.json" --onnx "$ARTIFACT/model.onnx"
        --times "$WORKDIR/times.json" --bench-log "$WORKDIR/bench.log" --engine "$WORKDIR/$ENGINE" --build-s "$BUILD_S" --batch "$BATCH"
        --warmup-ms "$WARMUP_MS" --window "$WINDOW_START" "$WINDOW_END" --device-model "$DEVICE_MODEL"
        --l4t "$L4T" --jetpack "$JETPACK" --tensorrt "$TRT_VERSION" --power-mode "$POWER_MODE_NAME"
        --power-mode-id "$POWER_MODE_ID" --command "$COMMAND_LINE" --out "$OUT")
    if [[ -n $TEGRA_LOG ]]; then cmd+=(--tegrastats "$TEGRA_LOG"); fi
    if [[ $POWER_APPLIED -eq 1 ]]; then cmd+=(--power-mode-applied); fi
    if [[ $CLOCKS_APPLIED -eq 1 ]]; then cmd+=(--jetson-clocks); fi
    run "${cmd[@]}" || die "could not write the results (the message above says which file is wrong)" \
        "look at $WORKDIR/times.json and $WORKDIR/bench.log"
}

main() {
    parse_args "$@"
    check_artifact
    find_trtexec
    detect_device
    read_manifest
    prepare_workdir
    set_power
    build_engine
    benchmark
    summarize
    if dry; then note "dry run: nothing was built, measured or changed"
    else note "results: $OUT (copy it back and run: edgevit report RUN --device-results $(basename "$OUT"))"; fi
}

trap kill_tegrastats EXIT
trap 'exit 130' INT TERM
main "$@"
