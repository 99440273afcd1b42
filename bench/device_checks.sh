#!/bin/bash
# The GPU checks of issue 20 as one prepared run, for a session that is lent a CUDA machine
# (the device tool): about 6-9 minutes on one H200, everything logged to $OUT/device_checks.log.
#
#   bench/device_checks.sh fetch   # here, before the run: the wheels the GPU machine lacks, into .whl/
#   bench/device_checks.sh run     # there: carry [".whl"], timeout_s 600
#
# The GPU image has Python 3.12 with torch, numpy, h5py, pytest and nvidia-ml-py but an older
# protobuf than engine/proto/caffe_pb2.py was generated for (7.35) and no lmdb, and it reaches no
# package index: `fetch` downloads those two as Python 3.12 manylinux wheels (about 1 MB), `run`
# installs them into /tmp/site. Each check has its own time limit, so one that hangs leaves the
# others their time; the figures go into bench/RESULTS.md by hand, with the date and the device.
set -u
cd "$(dirname "$0")/.."
WHEELS=.whl
PROTOBUF=protobuf==7.36.2
LMDB=lmdb==3.0.0

fetch() {
    grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
    mkdir -p "$WHEELS"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "$PROTOBUF" "$LMDB"
    ls -l "$WHEELS"
}

step() {  # step SECONDS TITLE COMMAND...: run one check under its own limit, log its status
    local limit=$1 title=$2
    shift 2
    echo
    echo "=== $title ($(date -u +%H:%M:%S), limit ${limit}s)"
    timeout "$limit" "$@"
    echo "=== $title: exit $?"
}

run() {
    local log="${OUT:-/tmp}/device_checks.log"
    exec > >(tee "$log") 2>&1
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    date -u
    nvidia-smi -L
    python3 -c "import torch, google.protobuf, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'protobuf', google.protobuf.__version__, 'numpy', numpy.__version__)"
    step 30 "GPU list and NVML readers (jobs.gpus, jobs.hardware)" python3 -c "
from caffeseg.jobs import gpus, hardware
found = gpus.detect(); print('gpus.detect():', found); print('hardware.gpu_usage:', hardware.gpu_usage(found))"
    step 200 "golden suite on CUDA (CAFFESEG_TEST_GPU=1)" env CAFFESEG_TEST_GPU=1 python3 -m pytest -q -p no:cacheprovider \
        tests/test_golden_layers_alone.py tests/test_golden_layers_in_net.py tests/test_golden_nets.py \
        tests/test_solvers_golden.py
    step 150 "training throughput, batch 8 (targets: FCN-AlexNet >= 500, FCN-8s >= 100 images/s)" \
        python3 bench/training_throughput.py --device cuda --nets fcn_alexnet fcn_8s --batches 8 --channels 3 --steps 20
    step 90 "engine.Net against a hand-written module, batch 1 (target <= 1.3x)" \
        python3 bench/engine_speed.py --device cuda --nets fcn_alexnet --channels 3 --repeat 10
    step 60 "Dice layer share of a step (target < 5 %)" python3 bench/dice_layer_cost.py --gpu
    date -u
}

case "${1:-}" in
    fetch) fetch ;;
    run) run ;;
    *) echo "usage: $0 fetch|run" >&2; exit 2 ;;
esac
