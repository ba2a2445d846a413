#!/usr/bin/env bash
# Runs kiln-cuda's kernels on the host, without a GPU, against naive C++ references.
#
# shim.h emulates the CUDA subset the kernels use (one std::thread per CUDA thread, barriers
# for __syncthreads, a per-warp exchange for __shfl_*_sync, `static` for __shared__ with blocks
# run one after another, f16 through _Float16). It checks the kernels' logic: indexing,
# block and warp reductions, online softmax, Welford merges, strided reads. It cannot check
# what only hardware shows (registers, alignment faults, speed): that is gpu_check.sh's job.
#
#   bash crates/kiln-cuda/emu/run.sh        # needs g++ 12+ (C++20 <barrier>, _Float16)
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in reduce norm attention layout pool index conv qlinear; do
    python3 - "$f" "$work" <<'PY'
import sys
f, work = sys.argv[1], sys.argv[2]
common = open('../../../kernels/common.cuh').read()
src = open(f'../../../kernels/{f}.cu').read().replace('#include "common.cuh"', common, 1)
for line in ('#include <cuda_fp16.h>', '#include <cuda_bf16.h>', '#include <mma.h>', '#pragma once'):
    src = src.replace(line, '')
open(f'{work}/{f}_full.inc', 'w').write(src)
PY
done
cargo run -q -p kiln-cuda --example emu_dump -- "$work"
cp shim.h families.cpp generated.cpp qlinear.cpp igemm.cpp "$work"
cd "$work"
g++ -std=c++20 -O1 -pthread -w qlinear.cpp -o qlinear
./qlinear
g++ -std=c++20 -O1 -pthread -w igemm.cpp -o igemm
./igemm
g++ -std=c++20 -O1 -pthread -w families.cpp -o families
g++ -std=c++20 -O1 -pthread -w generated.cpp -o generated
./families
./generated
