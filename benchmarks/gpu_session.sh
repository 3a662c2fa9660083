#!/usr/bin/env bash
# The GPU figures in one device call: through the batcher next to bare forwards and the card's
# floor (benchmarks/bench_batcher_device.py), DINOv3 and Depth Anything V2, in the device's
# default dtype (float16 on CUDA).
#
# The lent machine has torch, transformers and OpenCV but not every package the server
# imports, and cannot reach a registry, so the missing ones travel as wheels for its Python
# (3.12). Two steps:
#
#   bash benchmarks/gpu_session.sh wheels    # here, once: cp312 wheels into .whl/ (git-ignored)
#   bash benchmarks/gpu_session.sh run       # there, carrying .whl; figures under $OUT
#
# `run` installs the wheels into /tmp/site, writes the full-size random-weight checkpoints
# (benchmarks/checkpoints.py), then runs each family under its own time limit, so one that
# fails or overruns leaves the others' JSON and logs in $OUT. `DEVICE=cpu REQUESTS=8 BATCH=2
# REPEATS=2 OUT=/tmp/gs` runs the same steps on a CPU (with no .whl/ there, the environment's
# own packages), as a check of the script.
set -uo pipefail
cd "$(dirname "$0")/.."

# What the device image lacks (/work/.library/device/KINDS.md lists what it has); OpenCV for
# IMWRITE_PNG_FILTER (>= 4.12), which the image's copy may predate.
WHEELS=("msgspec==0.23.0" "orjson==3.13.0" "pycocotools==2.0.11" "opencv-python-headless==4.12.0.88")

wheels() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    local platforms=()
    for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${tag}_x86_64")
    done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "${WHEELS[@]}"
    du -sh .whl
}

run() {
    local out="${OUT:-/tmp/gpu-session}" device="${DEVICE:-cuda}" requests="${REQUESTS:-256}"
    local batch="${BATCH:-32}" repeats="${REPEATS:-10}"
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
      python3 -c 'import torch, transformers, cv2; print(torch.__version__, transformers.__version__, cv2.__version__)'
    } | tee "$out/versions.txt"
    timeout 300 python3 benchmarks/checkpoints.py --families dinov3 depth-anything-v2 \
        >"$out/checkpoints.log" 2>&1 || { tail -20 "$out/checkpoints.log"; exit 1; }
    # family, seconds allowed
    for spec in "dinov3 150" "depth-anything 200"; do
        set -- $spec
        timeout "$2" python3 benchmarks/bench_batcher_device.py --device "$device" \
            --family "$1" --requests "$requests" --batch "$batch" --repeats "$repeats" \
            --json "$out/batcher_$1.json" \
            2>&1 | grep -v "Loading weights" | tee "$out/batcher_$1.log"
        echo "$1: exit ${PIPESTATUS[0]}"
    done
}

case "${1:-}" in
    wheels) wheels ;;
    run) run ;;
    *) echo "usage: $0 wheels|run" >&2; exit 2 ;;
esac
