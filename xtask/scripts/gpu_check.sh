#!/usr/bin/env bash
# GPU check of kiln-cuda: every kernel family against the CPU reference on a real GPU.
#
# The GPU machine has no Rust toolchain, so this runs in two places:
#
#   bash xtask/scripts/gpu_check.sh build    # here: builds the release test binaries and
#                                            # copies them into .gpu/kiln-cuda (ignored by git)
#   bash xtask/scripts/gpu_check.sh run      # on the GPU machine, with .gpu/kiln-cuda carried
#
# `run` sets KILN_REQUIRE_GPU=1, so a missing driver, device or NVRTC fails instead of
# skipping; NVRTC is found in /usr/local/cuda there (or KILN_NVRTC_DIR). Full logs go to
# $OUT/gpu-check (or ./gpu-check-logs); a short table is printed last. Exits non-zero if
# any test failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR=.gpu/kiln-cuda
# The test binaries that need or use a GPU; `snapshots` reads golden files from the source
# tree and has no GPU part, so it stays here.
TESTS=(gpu_families nvrtc_compile kiln_cuda)

build() {
    rm -rf "$BIN_DIR" && mkdir -p "$BIN_DIR"
    cargo test --release -p kiln-cuda --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys, shutil
want = set(sys.argv[2:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["name"] in want:
        shutil.copy(exe, sys.argv[1] + "/" + m["target"]["name"])
        print("copied", m["target"]["name"], "from", exe)
' "$BIN_DIR" "${TESTS[@]}"
    for t in "${TESTS[@]}"; do
        [[ -x "$BIN_DIR/$t" ]] || { echo "missing test binary $t" >&2; exit 1; }
        # Debug info would take the carry past its limit; symbols stay for backtraces.
        strip --strip-debug "$BIN_DIR/$t"
    done
    du -sh "$BIN_DIR"
}

run() {
    local logs="${OUT:-$PWD/gpu-check-logs}/gpu-check"
    mkdir -p "$logs"
    export KILN_REQUIRE_GPU=1
    nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader > "$logs/gpu.txt" 2>&1 || true
    local status=0
    local table="binary passed failed seconds"
    for t in "${TESTS[@]}"; do
        local bin="$BIN_DIR/$t"
        [[ -x "$bin" ]] || { echo "no $bin: run 'gpu_check.sh build' first and carry $BIN_DIR" >&2; exit 1; }
        local t0=$SECONDS
        # One test thread: the tests share one GPU and its stream.
        if "$bin" --test-threads=1 --nocapture > "$logs/$t.log" 2>&1; then :; else status=1; fi
        local passed failed
        passed=$(grep -Eo '[0-9]+ passed' "$logs/$t.log" | awk '{s+=$1} END {print s+0}')
        failed=$(grep -Eo '[0-9]+ failed' "$logs/$t.log" | awk '{s+=$1} END {print s+0}')
        table+=$'\n'"$t $passed $failed $((SECONDS - t0))"
        if grep -q '^skipped' "$logs/$t.log"; then
            echo "$t skipped tests on a GPU machine:" >&2
            grep '^skipped' "$logs/$t.log" >&2
            status=1
        fi
    done
    grep -h -E 'panicked|FAILED|failures:' "$logs"/*.log | head -40 || true
    echo
    cat "$logs/gpu.txt"
    column -t <<< "$table" 2>/dev/null || echo "$table"
    exit $status
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
