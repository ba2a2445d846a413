#!/usr/bin/env bash
# Every GPU check and benchmark of Kiln in one go.
#
# The GPU machine has no Rust toolchain, so this runs in two places:
#
#   bash xtask/scripts/gpu_check.sh build    # here: builds the release binaries (kiln, xtask and
#                                            # the test binaries that use a GPU) into .gpu/
#                                            # (ignored by git), with the onnx wheel for the
#                                            # conformance suite
#   bash xtask/scripts/gpu_check.sh run [STAGES]   # on the GPU machine, with .gpu carried
#
# STAGES (default: tests conformance bench): also soak, accuracy, early, and probe (after bench:
# Nsight Compute over the INT8 engines' kernels, ResNet-50's INT8 error layer by layer). `soak` exports ResNet-50 and
# BERT-base and runs 8 threads with their own contexts on each for KILN_SOAK_SECONDS (300 by
# default), one model after the other (KILN_SOAK_MODELS picks them), so that the memory check
# sees no other process. KILN_TESTS="crate:test ..." runs a subset of the GPU tests.
# `run` sets KILN_REQUIRE_GPU=1, so a missing
# driver, device or NVRTC fails instead of skipping. Logs go to $OUT (or ./gpu-check-logs):
# summary.txt, the benchmark table bench.md and bench.json, the conformance list
# not_passing.txt, and logs.tar.gz with everything else. Exits non-zero if a test failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
GPU=.gpu
# Test binaries that need or use a GPU, as package:target.
TESTS=(kiln-cuda:gpu_families kiln-cuda:gpu_index kiln-cuda:gpu_dtype kiln-cuda:gpu_int8 kiln-cuda:gpu_attention kiln-cuda:gpu_spatial kiln-cuda:nvrtc_compile kiln-cuda:kiln_cuda kiln:gpu kiln:gpu_fault)

build() {
    set -e
    rm -rf "$GPU/bin" "$GPU/tests" "$GPU/pack.tar.xz" && mkdir -p "$GPU/bin" "$GPU/tests" "$GPU/cache"
    cargo build --release -p kiln-cli -p xtask
    cp target/release/kiln target/release/xtask "$GPU/bin/"
    local pkgs=()
    for t in "${TESTS[@]}"; do pkgs+=(-p "${t%%:*}"); done
    cargo test --release "${pkgs[@]}" --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys, shutil
want = set(sys.argv[2:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe:
        for w in want:
            pkg, name = w.split(":")
            if m["target"]["name"] == name and "/" + pkg + "#" in m["package_id"]:
                shutil.copy(exe, sys.argv[1] + "/" + w.replace(":", "-"))
                print("copied", w)
' "$GPU/tests" "${TESTS[@]}"
    for t in "${TESTS[@]}"; do
        [[ -x "$GPU/tests/${t/:/-}" ]] || { echo "missing test binary $t" >&2; exit 1; }
    done
    # Symbols would take the carry past its 64 MiB limit.
    strip --strip-all "$GPU"/bin/* "$GPU"/tests/*
    cp ~/.cache/kiln/onnx-*.whl "$GPU/cache/" 2>/dev/null || cargo xtask fetch-data
    cp -n ~/.cache/kiln/onnx-*.whl "$GPU/cache/"
    # Compressed, the binaries take a quarter of the carry; `run` unpacks them.
    tar -cJf "$GPU/pack.tar.xz" -C "$GPU" bin tests && rm -rf "$GPU/bin" "$GPU/tests"
    du -sh "$GPU"
}

# cudarc opens libcudnn.so and libcublasLt.so by their unversioned names; the GPU machine has
# the versioned ones, so link them under those names.
libs() {
    local d=/tmp/kiln-libs
    mkdir -p "$d"
    for pat in 'libcudnn.so.9' 'libcublasLt.so.13' 'libcublas.so.13'; do
        local f
        f=$(ls /usr/local/cuda/lib64/$pat /lib/x86_64-linux-gnu/$pat /usr/lib/x86_64-linux-gnu/$pat 2>/dev/null | head -1)
        [[ -n "$f" ]] || f=$(python3 -c "import glob,sys; g=glob.glob('/usr/local/lib/python3*/dist-packages/nvidia/**/$pat', recursive=True); print(g[0] if g else '')")
        [[ -n "$f" ]] && ln -sf "$f" "$d/${pat%%.so*}.so"
    done
    export LD_LIBRARY_PATH="$d:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
}

run() {
    local out="${OUT:-$PWD/gpu-check-logs}"
    local logs=/tmp/kiln-gpu-logs
    mkdir -p "$out" "$logs"
    local stages="${*:-tests conformance bench}"
    if [[ -f "$GPU/pack.tar.xz" ]]; then tar -xJf "$GPU/pack.tar.xz" -C "$GPU"; fi
    export KILN_REQUIRE_GPU=1 KILN_CACHE="$PWD/$GPU/cache" RUST_BACKTRACE=1
    libs
    local status=0
    local summary="$out/summary.txt"
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader > "$summary" 2>&1
    if [[ " $stages " == *" tests "* ]]; then
        local table="binary passed failed seconds"
        # KILN_TESTS (space-separated crate:test names) runs a subset.
        local tests
        read -r -a tests <<< "${KILN_TESTS:-${TESTS[*]}}"
        for t in "${tests[@]}"; do
            local bin="$GPU/tests/${t/:/-}" t0=$SECONDS
            [[ -x "$bin" ]] || { echo "no $bin: run 'gpu_check.sh build' first" >&2; exit 1; }
            # One test thread: tests share one GPU.
            # KILN_TEST_TIMEOUT (s) bounds each binary, so one hang cannot take the whole run.
            if (cd "crates/${t%%:*}" && KILN_SOAK_SECONDS=60 timeout "${KILN_TEST_TIMEOUT:-400}" "../../$bin" --test-threads=1 --nocapture) > "$logs/${t/:/-}.log" 2>&1; then :; else status=1; fi
            local passed failed
            passed=$(grep -Eo '[0-9]+ passed' "$logs/${t/:/-}.log" | awk '{s+=$1} END {print s+0}')
            failed=$(grep -Eo '[0-9]+ failed' "$logs/${t/:/-}.log" | awk '{s+=$1} END {print s+0}')
            table+=$'\n'"$t $passed $failed $((SECONDS - t0))"
        done
        { echo "$table"; grep -h -E 'panicked|FAILED|^failures:|cosine' "$logs"/*.log | head -60; } >> "$summary"
        # Whole models through the CLI, on the GPU against the CPU reference.
        for args in "tests/models/bert_layer.onnx --shapes x=4x16x32 --shapes mask=4x1x1x16" tests/models/tiny_cnn.onnx; do
            for prec in "" --fp16; do
                echo "== kiln compare $args --device cuda $prec" >> "$summary"
                "$GPU/bin/kiln" compare $args --device cuda $prec >> "$summary" 2>&1 || status=1
            done
        done
        # Engine files: built here for this GPU, loaded, run and timed.
        for m in tiny_cnn bert_layer; do
            local shapes=""
            [[ $m == bert_layer ]] && shapes="--shapes x=4x16x32 --shapes mask=4x1x1x16"
            echo "== engine file $m" >> "$summary"
            { "$GPU/bin/kiln" build tests/models/$m.onnx $shapes --fp16 -o /tmp/$m.kiln &&
              "$GPU/bin/kiln" run /tmp/$m.kiln --device cuda &&
              "$GPU/bin/kiln" bench /tmp/$m.kiln --duration 1; } >> "$summary" 2>&1 || status=1
        done
    fi
    if [[ " $stages " == *" conformance "* ]]; then
        local t0=$SECONDS
        "$GPU/bin/xtask" conformance --device cuda --jobs 8 --out-dir /tmp/kiln-conf > "$logs/conformance.log" 2>&1 || status=1
        { echo "== conformance on CUDA ($((SECONDS - t0)) s)"; tail -12 "$logs/conformance.log"; } >> "$summary"
        cp /tmp/kiln-conf/cuda/not_passing.txt "$out/" 2>/dev/null || true
        cp /tmp/kiln-conf/cuda/results.json "$logs/conformance-results.json" 2>/dev/null || true
    fi
    if [[ " $stages " == *" bench "* ]]; then
        local t0=$SECONDS
        timeout "${KILN_BENCH_TIMEOUT:-420}" python3 xtask/scripts/gpu_bench.py --kiln "$GPU/bin/kiln" --out "$out" ${KILN_BENCH_ARGS:-} > "$logs/bench.log" 2>&1 || status=1
        { echo "== benchmark ($((SECONDS - t0)) s)"; cat "$out/bench.md" 2>/dev/null || grep -E '^\{|error' "$logs/bench.log" | tail -30; } >> "$summary"
    fi
    if [[ " $stages " == *" probe "* ]]; then
        # Where INT8 time and accuracy go, after `bench` has built the INT8 engines: Nsight
        # Compute over their implicit-GEMM kernels (KILN_NCU_KERNELS, a regex; KILN_NCU_COUNT
        # launches each), and ResNet-50 in INT8 compared layer by layer on the GPU and as a
        # whole on the CPU reference, with the calibration cache the bench made.
        local t0=$SECONDS dir=/tmp/kiln-models ncu
        ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
        for e in ${KILN_PROBE_ENGINES:-/tmp/resnet50-int8-32.kiln /tmp/bert_base-int8-32.kiln}; do
            [[ -f $e ]] || { echo "probe: no $e (run the bench stage first)" >> "$summary"; continue; }
            timeout "${KILN_NCU_TIMEOUT:-200}" "$ncu" --clock-control none -k "regex:${KILN_NCU_KERNELS:-igemm}" \
                --launch-count "${KILN_NCU_COUNT:-40}" --section SpeedOfLight --section Occupancy \
                --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
                "$GPU/bin/kiln" run "$e" --device cuda > "$out/ncu-$(basename "$e" .kiln).txt" 2>&1 || status=1
        done
        if [[ -f $dir/resnet50.calib.txt ]]; then
            "$GPU/bin/kiln" compare $dir/resnet50.onnx --device cuda --shapes input=1x3x224x224 --seed 1 --int8 --fp16 \
                --calib-cache $dir/resnet50.calib.txt --per-layer > "$out/resnet50-int8-per-layer.txt" 2>&1 || status=1
            "$GPU/bin/kiln" compare $dir/resnet50.onnx --device cpu --shapes input=1x3x224x224 --seed 1 --int8 \
                --calib-cache $dir/resnet50.calib.txt > "$out/resnet50-int8-cpu.txt" 2>&1 || status=1
        fi
        echo "== probe ($((SECONDS - t0)) s): ncu-*.txt, resnet50-int8-per-layer.txt, resnet50-int8-cpu.txt" >> "$summary"
    fi
    if [[ " $stages " == *" accuracy "* ]]; then
        # FP16 on the GPU against the FP32 CPU reference, for the two random-weight CNNs
        # (KILN_ACCURACY_POLICIES: the early-layer policies to compare, default split).
        local t0=$SECONDS dir=/tmp/kiln-models
        python3 xtask/scripts/gpu_bench.py --export-only --models-dir $dir > "$logs/accuracy-export.log" 2>&1 || status=1
        echo "== FP16 accuracy (kiln compare --device cuda --fp16, batch 1)" >> "$summary"
        for m in resnet50 mobilenet_v2; do
            for policy in ${KILN_ACCURACY_POLICIES:-split}; do
                for seed in ${KILN_ACCURACY_SEEDS:-1 2 3}; do
                    local line
                    line=$(KILN_FP16_EARLY=$policy "$GPU/bin/kiln" compare $dir/$m.onnx --device cuda --fp16 \
                        --shapes input=1x3x224x224 --seed "$seed" 2>&1 | tail -1) || status=1
                    echo "$m $policy seed $seed: $line" >> "$summary"
                done
            done
        done
        echo "(accuracy: $((SECONDS - t0)) s)" >> "$summary"
    fi
    if [[ " $stages " == *" early "* ]]; then
        # How many early layers of ResNet-50 split their weights: accuracy (batch 1, against
        # the FP32 CPU reference) and GPU compute time at batch 32, per count in
        # KILN_EARLY_LAYERS ("default" is an eighth, "off" splits none).
        local t0=$SECONDS dir=/tmp/kiln-models m=${KILN_EARLY_MODEL:-resnet50}
        python3 xtask/scripts/gpu_bench.py --export-only --models-dir $dir > "$logs/early-export.log" 2>&1 || status=1
        echo "== early layers of $m: accuracy (seeds ${KILN_ACCURACY_SEEDS:-1 2}) and batch-32 median ms" >> "$summary"
        for n in ${KILN_EARLY_LAYERS:-default 1 2 4 off}; do
            local env=()
            case $n in
                default) ;;
                off) env=(KILN_FP16_EARLY=off) ;;
                *) env=(KILN_FP16_EARLY_LAYERS=$n) ;;
            esac
            local acc="" seed
            for seed in ${KILN_ACCURACY_SEEDS:-1 2}; do
                acc+=" $(env "${env[@]}" "$GPU/bin/kiln" compare $dir/$m.onnx --device cuda --fp16 \
                    --shapes input=1x3x224x224 --seed "$seed" 2>&1 | tail -1)"
            done
            env "${env[@]}" "$GPU/bin/kiln" build $dir/$m.onnx --fp16 --shapes input=32x3x224x224 \
                -o /tmp/early-$n.kiln > "$logs/early-$n.log" 2>&1 || status=1
            local ms
            ms=$("$GPU/bin/kiln" bench /tmp/early-$n.kiln --duration 2 --json 2>>"$logs/early-$n.log" |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print("steps", d["steps"], "gpu median", round(d["gpu_compute_ms"]["median"], 4), "ms")')
            echo "$m layers=$n:$acc | bench $ms" >> "$summary"
        done
        echo "(early: $((SECONDS - t0)) s)" >> "$summary"
    fi
    if [[ " $stages " == *" soak "* ]]; then
        local t0=$SECONDS dir=/tmp/kiln-models
        python3 xtask/scripts/gpu_bench.py --export-only --models-dir $dir > "$logs/soak-export.log" 2>&1 || status=1
        # One model after the other: the memory check reads the device's free memory, which
        # another process's allocations would move.
        for m in ${KILN_SOAK_MODELS:-resnet50 bert_base}; do
            (cd crates/kiln && KILN_SOAK_MODEL=$dir/$m.onnx KILN_SOAK_FP16=1 KILN_SOAK_SECONDS="${KILN_SOAK_SECONDS:-300}" \
                "../../$GPU/tests/kiln-gpu" --exact contexts_on_eight_threads_agree_with_one --nocapture) > "$logs/soak-$m.log" 2>&1 || status=1
        done
        { echo "== soak, one model after the other ($((SECONDS - t0)) s)"; grep -h -E '^soak|panicked|GPU memory grew|test result' "$logs"/soak-*.log; } >> "$summary"
    fi
    tar -czf "$out/logs.tar.gz" -C "$logs" . 2>/dev/null
    cat "$summary"
    exit $status
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 build | run [tests] [conformance] [bench] [probe] [accuracy] [early] [soak]" >&2; exit 2 ;;
esac
