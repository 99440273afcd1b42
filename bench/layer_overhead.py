"""The engine's cost per layer when the layers themselves cost almost nothing.

A deep net of tiny layers (3×3 convolutions and in-place ReLUs on 1×2×8×8, then
SoftmaxWithLoss) runs forward+backward through ``engine.Net`` (one solver pass,
``Net._forward_backward``) and, in the same process, as a plain PyTorch autograd function
of the same layers. The difference per layer is the engine's bookkeeping: Caffe's per-blob
diffs, per-layer backward, Split/in-place rules. It is what dominates a small net, or a
large one on a fast accelerator, where the kernels take microseconds.

    .venv/bin/python bench/layer_overhead.py [--depth 24] [--repeat 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import timeit

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def net_text(depth: int) -> str:
    layers = ['name: "deep_tiny"',
              'layer { name: "in" type: "Input" top: "data" top: "label" input_param { '
              'shape { dim: 1 dim: 2 dim: 8 dim: 8 } shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }']
    previous = "data"
    for i in range(depth // 2):
        layers.append(f'layer {{ name: "conv{i}" type: "Convolution" bottom: "{previous}" top: "conv{i}" '
                      f'convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}')
        layers.append(f'layer {{ name: "relu{i}" type: "ReLU" bottom: "conv{i}" top: "conv{i}" }}')
        previous = f"conv{i}"
    layers.append(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "{previous}" bottom: "label" top: "loss" }}')
    return "\n".join(layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=24, help="layers between input and loss (even)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs (best is reported)")
    ap.add_argument("--number", type=int, default=200, help="passes per timed run")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from caffeseg import engine
    from caffeseg.engine.net import Net
    from caffeseg.engine.proto import caffe_pb2
    from caffeseg.engine.prototxt import parse_net

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        engine.set_mode_gpu()
    net = Net.from_param(parse_net(net_text(args.depth)), caffe_pb2.TRAIN)
    engine.set_mode_cpu()
    rng = np.random.RandomState(0)
    net.blobs["data"].data[...] = rng.randn(1, 2, 8, 8)
    net.blobs["label"].data[...] = rng.randint(0, 2, (1, 1, 8, 8))
    device = net.device

    weights = [(blobs[0].tensor.clone().requires_grad_(), blobs[1].tensor.clone().requires_grad_())
               for name, blobs in net.params.items()]
    x = net.blobs["data"].tensor.clone()
    label = net.blobs["label"].tensor[:, 0].long()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def engine_pass():
        net._forward_backward()
        sync()

    def torch_pass():
        h = x
        for w, b in weights:
            h = torch.relu(F.conv2d(h, w, b, padding=1))
        loss = F.cross_entropy(h, label)
        loss.backward()
        sync()

    layers = args.depth + 1
    rows = []
    for name, fn in (("plain PyTorch", torch_pass), ("engine.Net", engine_pass)):
        fn()  # warm-up
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
        rows.append((name, best))
    reference = rows[0][1]
    print(f"{layers} layers (conv 3x3 + in-place ReLU on 1x2x8x8, SoftmaxWithLoss), {device}, "
          f"forward+backward, best of {args.repeat} x {args.number}")
    print(f"{'':<16}{'us per pass':>12}{'us per layer':>14}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<16}{seconds * 1e6:12.0f}{seconds * 1e6 / layers:14.1f}{seconds / reference:8.2f}")
    overhead = (rows[1][1] - reference) * 1e6 / layers
    print(f"engine bookkeeping: {overhead:.1f} us per layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
