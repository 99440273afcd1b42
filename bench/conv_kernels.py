"""Convolution kernels of FCN-AlexNet and FCN-8s one by one: torch's conv (oneDNN) against
im2col + GEMM on numpy's OpenBLAS (what BVLC Caffe runs), forward, input gradient and weight
gradient timed separately, A/B interleaved in one process.

For each layer shape (batch 1 at 256², as the nets see it) and pass, the table gives the best
CPU time of --rounds interleaved runs of each variant, its GF/s (the direct convolution's
multiply-adds × 2 / time), and the ratio to torch's kernel in the same round.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/conv_kernels.py --rounds 3
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/conv_kernels.py --layers fc6_alex fc7 --batch 4

Variants: ``torch`` = F.conv2d / aten.convolution_backward with one output asked for;
``gemm`` = F.unfold + one numpy matmul per batch (the images' columns side by side, as
fast_conv does), the input gradient folded back with F.fold; ``gemm/img`` = one GEMM per
image (Caffe's loop); for the weight gradient also ``gemm T`` (the transposed product
colsᵀ-major, then a transposing copy), ``torch mm`` (MKL), ``gemm+add`` (a new product added
to an existing diff, as the net did) and ``gemm acc`` (fast_conv.gemm adding into the diff
inside the GEMM, beta = 1); ``winograd`` = engine/layer_types/winograd.py (3×3 stride 1;
its weight gradient added into a diff as well).
Set OPENBLAS_NUM_THREADS before the start (numpy reads it once).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffeseg.engine.layer_types import fast_conv, winograd  # noqa: E402

# name: (in channels, out channels, kernel, pad, stride, group, input size) at batch 1, 256² input
LAYERS = {
    "alex_conv2": (96, 256, 5, 2, 1, 2, 56),
    "alex_conv3": (256, 384, 3, 1, 1, 1, 28),
    "alex_conv4": (384, 384, 3, 1, 1, 2, 28),
    "alex_conv5": (384, 256, 3, 1, 1, 2, 28),
    "fc6_alex": (256, 4096, 6, 0, 1, 1, 14),
    "fc7": (4096, 4096, 1, 0, 1, 1, 9),
    "vgg1_2": (64, 64, 3, 1, 1, 1, 454),
    "vgg2_1": (64, 128, 3, 1, 1, 1, 227),
    "vgg2_2": (128, 128, 3, 1, 1, 1, 227),
    "vgg3_1": (128, 256, 3, 1, 1, 1, 114),
    "vgg3_2": (256, 256, 3, 1, 1, 1, 114),
    "vgg4_1": (256, 512, 3, 1, 1, 1, 57),
    "vgg4_2": (512, 512, 3, 1, 1, 1, 57),
    "vgg5_2": (512, 512, 3, 1, 1, 1, 29),
    "fc6_8s": (512, 4096, 7, 0, 1, 1, 15),
}


def cpu_time(fn):
    start = time.process_time()
    fn()
    return time.process_time() - start


def variants(x, w, dy, pad, stride, group):
    """{pass: {variant: callable}} for one layer."""
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    oh, ow = dy.shape[2:]
    og = o // group
    unfold = lambda t: F.unfold(t, k, padding=pad, stride=stride)  # noqa: E731  (n, c·k·k, L)
    fold = lambda cols: F.fold(cols, (h, wd), k, padding=pad, stride=stride)  # noqa: E731
    cols = unfold(x)  # for the weight gradient (saved from the forward, as fast_conv does)
    L = cols.shape[2]
    rows = cg * k * k

    def side(t, g):  # (n, g·R, L) → group g's (R, n·L)
        r = t.shape[1] // group
        part = t[:, g * r:(g + 1) * r]
        return part.reshape(r, L).numpy() if n == 1 else part.transpose(0, 1).reshape(r, n * L).numpy()

    w2 = [w[g * og:(g + 1) * og].reshape(og, rows).numpy() for g in range(group)]
    dy3 = dy.reshape(n, o, L)

    def gemm_forward():
        c3 = unfold(x)
        return [w2[g] @ side(c3, g) for g in range(group)]

    def gemm_forward_per_image():
        c3 = unfold(x)
        return [[w2[g] @ c3[i, g * rows:(g + 1) * rows].numpy() for g in range(group)] for i in range(n)]

    def gemm_input():
        parts = [torch.from_numpy(w2[g].T @ side(dy3, g)) for g in range(group)]
        dcols = torch.cat(parts, 0) if group > 1 else parts[0]
        dcols = dcols.reshape(1, -1, L) if n == 1 else dcols.reshape(-1, n, L).transpose(0, 1)
        return fold(dcols)

    def gemm_weight():
        return [side(dy3, g) @ side(cols, g).T for g in range(group)]

    def gemm_weight_transposed():
        return [np.ascontiguousarray((side(cols, g) @ side(dy3, g).T).T) for g in range(group)]

    def torch_mm_weight():
        return [torch.from_numpy(side(dy3, g)) @ torch.from_numpy(side(cols, g)).t() for g in range(group)]

    def torch_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], group, mask)

    diff = torch.zeros(w.shape)  # a parameter diff the weight gradient is added to

    def gemm_weight_then_add():
        for g in range(group):
            diff[g * og:(g + 1) * og].view(og, rows).add_(torch.from_numpy(side(dy3, g) @ side(cols, g).T))

    def gemm_weight_accumulate():
        for g in range(group):
            fast_conv.gemm(torch.from_numpy(side(dy3, g)), torch.from_numpy(side(cols, g)).t(),
                           diff[g * og:(g + 1) * og].view(og, rows), accumulate=True)

    forward = {"torch": lambda: F.conv2d(x, w, None, stride, pad, 1, group), "gemm": gemm_forward}
    if n > 1:
        forward["gemm/img"] = gemm_forward_per_image
    passes = {
        "forward": forward,
        "input grad": {"torch": torch_backward([True, False, False]), "gemm": gemm_input},
        "weight grad": {"torch": torch_backward([False, True, False]), "gemm": gemm_weight,
                        "gemm T": gemm_weight_transposed, "torch mm": torch_mm_weight,
                        "gemm+add": gemm_weight_then_add, "gemm acc": gemm_weight_accumulate},
    }
    if winograd.applies(w, [stride] * 2, [pad] * 2, [1, 1]):
        passes["forward"]["winograd"] = lambda: winograd.convolve(x, w, None, pad, group, fast_conv.gemm)
        passes["input grad"]["winograd"] = lambda: winograd.input_gradient(dy, w, pad, group, fast_conv.gemm)
        passes["weight grad"]["winograd"] = lambda: winograd.weight_gradient(
            x, dy, pad, group, fast_conv.gemm, diff, accumulate=True)
    return passes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best is reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--variants", nargs="+", help="only these variants (torch always runs: the ratio's base)")
    args = ap.parse_args(argv)
    if args.batch <= 0 or args.rounds <= 0 or args.threads <= 0:
        ap.error("--batch, --rounds and --threads must be > 0")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"batch {args.batch}, torch {args.threads} thread(s), OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '-')}, best CPU time of {args.rounds} interleaved rounds, "
          f"loadavg {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'layer':<11} {'pass':<12} {'variant':<9} {'CPU s':>8} {'GF/s':>6} {'/torch':>7}")
    for name in args.layers:
        c, o, k, pad, stride, group, size = LAYERS[name]
        x = torch.randn(args.batch, c, size, size, generator=gen)
        w = torch.randn(o, c // group, k, k, generator=gen) * 0.01
        out = (size + 2 * pad - k) // stride + 1
        dy = torch.randn(args.batch, o, out, out, generator=gen)
        flops = 2.0 * args.batch * o * (c // group) * k * k * out * out
        for pass_name, fns in variants(x, w, dy, pad, stride, group).items():
            if args.variants:
                fns = {v: fn for v, fn in fns.items() if v == "torch" or v in args.variants}
            best = {v: float("inf") for v in fns}
            for fn in fns.values():
                fn()  # warm-up
            for _ in range(args.rounds):
                for v, fn in fns.items():
                    best[v] = min(best[v], cpu_time(fn))
            for v, t in best.items():
                print(f"{name:<11} {pass_name:<12} {v:<9} {t:>8.4f} {flops / t / 1e9:>6.1f} {t / best['torch']:>6.2f}x",
                      flush=True)


if __name__ == "__main__":
    main()
