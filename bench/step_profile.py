"""Where one engine training step (engine.Net TRAIN forward+backward) spends its time, per layer.

Builds the same net as ``bench/engine_speed.py --caffe`` (train stage, Input blobs data and
label), times every layer's forward and backward through engine.Net's layer hooks (wall and
this process's CPU time, mean of --repeat steps after a warm-up step), and says which kernel a
convolution runs: ``fast_conv`` (our GEMMs), or torch's conv (oneDNN / the generic path).
``--ops`` adds torch.profiler's operator table (self CPU time) of one step.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/step_profile.py --net fcn_8s --batch 1 --threads 1
    .venv/bin/python bench/step_profile.py --net fcn_alexnet --batch 1 --ops 25

Set OPENBLAS_NUM_THREADS before the start (numpy reads it once); --threads sets torch's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from caffeseg import engine  # noqa: E402
from caffeseg.engine import rng  # noqa: E402
from caffeseg.engine.layer_types import fast_conv  # noqa: E402
from caffeseg.engine.proto import caffe_pb2  # noqa: E402

import engine_speed  # noqa: E402  (the side-by-side bench's net text)


def build_net(net_name, batch, channels, size):
    path = os.path.join(ROOT, "prototxt", f"{net_name}.prototxt")
    data_shape, label_shape = (batch, channels, size, size), (batch, 1, size, size)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as handle:
        handle.write(engine_speed.input_net_text(path, data_shape, label_shape))
    try:
        rng.set_seed(1)
        net = engine.Net(handle.name, caffe_pb2.TRAIN)
    finally:
        os.unlink(handle.name)
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.rand(*data_shape) * 255
    net.blobs["label"].data[...] = rs.randint(0, 2, label_shape)
    return net


def kernel_of(layer):
    """Which code a 2-D Convolution layer runs on its current bottom (as conv.compute decides)."""
    if layer.type != "Convolution":
        return ""
    impl = layer.impl
    x = layer.bottoms[0].tensor
    weight = layer.blobs[0].tensor
    fast = fast_conv.choose(x, weight, impl.stride, impl.pad, impl.dilation, impl.group)
    if fast is None:
        return "torch conv"
    return "fast_conv " + getattr(fast, "kind", getattr(fast, "__name__", "gemm"))


def per_layer_times(net, repeat):
    """{(index, 'fwd'|'bwd'): [wall, cpu]} summed over ``repeat`` steps."""
    totals = defaultdict(lambda: [0.0, 0.0])
    started = {}

    def begin(index):
        started[index] = (time.perf_counter(), time.process_time())

    def end_as(kind):
        def end(index):
            wall, cpu = started.pop(index)
            slot = totals[(index, kind)]
            slot[0] += time.perf_counter() - wall
            slot[1] += time.process_time() - cpu
        return end

    net._forward_backward()  # warm-up
    net.before_forward(begin)
    net.after_forward(end_as("fwd"))
    net.before_backward(begin)
    net.after_backward(end_as("bwd"))
    walls, cpus = [], []
    for _ in range(repeat):
        net.clear_param_diffs()
        wall, cpu = time.perf_counter(), time.process_time()
        net._forward_backward()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    for hooks in (net._before_forward, net._after_forward, net._before_backward, net._after_backward):
        hooks.clear()
    return totals, walls, cpus


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="fcn_alexnet", choices=sorted(engine_speed.CAFFE_REFERENCE))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--top", type=int, default=30, help="rows of the per-layer table")
    ap.add_argument("--ops", type=int, default=0, help="also torch.profiler's N costliest operators")
    args = ap.parse_args(argv)
    for name, value in (("batch", args.batch), ("channels", args.channels), ("size", args.size),
                        ("repeat", args.repeat), ("threads", args.threads)):
        if value <= 0:
            ap.error(f"--{name} must be > 0, got {value}")
    torch.set_num_threads(args.threads)
    net = build_net(args.net, args.batch, args.channels, args.size)
    totals, walls, cpus = per_layer_times(net, args.repeat)
    step_wall, step_cpu = sum(walls) / len(walls), sum(cpus) / len(cpus)
    print(f"{args.net} {args.batch}x{args.channels}x{args.size}x{args.size}, torch {args.threads} thread(s), "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '-')}, GEMMs: {fast_conv._GEMM}, "
          f"loadavg {open('/proc/loadavg').read().split()[:3]}")
    print(f"step: wall {step_wall:.3f} s, CPU {step_cpu:.3f} s (mean of {args.repeat}; best wall {min(walls):.3f})")
    rows = []
    for (index, kind), (wall, cpu) in totals.items():
        layer = net.layers[index]
        rows.append((wall / args.repeat, cpu / args.repeat, layer.name, layer.type, kind, kernel_of(layer),
                     tuple(layer.bottoms[0].shape) if layer.bottoms else ()))
    rows.sort(key=lambda r: -r[1])
    print(f"{'layer':<18} {'type':<14} {'pass':<4} {'wall s':>8} {'CPU s':>8} {'CPU %':>6}  kernel, bottom shape")
    for wall, cpu, name, kind_type, kind, kernel, shape in rows[:args.top]:
        print(f"{name:<18} {kind_type:<14} {kind:<4} {wall:>8.4f} {cpu:>8.4f} {100 * cpu / step_cpu:>5.1f}%  "
              f"{kernel} {shape}")
    by_type = defaultdict(float)
    for wall, cpu, name, kind_type, kind, kernel, shape in rows:
        by_type[(kind_type, kind)] += cpu
    print("CPU by layer type and pass: " + ", ".join(
        f"{t} {k} {100 * c / step_cpu:.0f}%" for (t, k), c in sorted(by_type.items(), key=lambda kv: -kv[1])
        if c / step_cpu >= 0.005))
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net._forward_backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
