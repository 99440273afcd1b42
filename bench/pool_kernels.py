"""MAX pooling on FCN's shapes at 256²: PyTorch's NCHW kernel against the channels-last kernel
that engine/layer_types/pooling.py uses from 8 channels on (the input converted to channels-last
and the result back, both included; the 3- and 8-channel rows run it too, to show the threshold),
forward and forward+backward, best of --repeat, 1 thread.

    .venv/bin/python bench/pool_kernels.py
    .venv/bin/python bench/pool_kernels.py --batches 1 4 8 --repeat 10
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from caffeseg.engine.layer_types import pooling  # noqa: E402

# (net, layer, channels, input size, kernel, stride): FCN-AlexNet and FCN-8s (pad 100) at 256²
LAYERS = [("fcn_alexnet", "pool1", 96, 112, 3, 2), ("fcn_alexnet", "pool2", 256, 56, 3, 2),
          ("fcn_alexnet", "pool5", 256, 28, 3, 2), ("fcn_8s", "pool1", 64, 454, 2, 2),
          ("fcn_8s", "pool2", 128, 227, 2, 2), ("fcn_8s", "pool3", 256, 114, 2, 2),
          ("fcn_8s", "pool4", 512, 57, 2, 2), ("fcn_8s", "pool5", 512, 29, 2, 2),
          ("small", "3 channels", 3, 256, 3, 2), ("small", "8 channels", 8, 128, 3, 2)]


def best_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def timings(pool, x, kernel, stride, repeat):
    leaf = x.clone().requires_grad_()

    def forward():
        pool(leaf, (kernel, kernel), (stride, stride), (0, 0), True)

    def forward_backward():
        y = pool(leaf, (kernel, kernel), (stride, stride), (0, 0), True)
        torch.autograd.grad(y, leaf, torch.ones_like(y))

    return best_ms(forward, repeat), best_ms(forward_backward, repeat)


def nchw(x, kernel, stride, pad, ceil_mode):
    return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode)


def channels_last(x, kernel, stride, pad, ceil_mode):
    """The engine's channels-last path, whatever the channel count (so the small rows show why
    pooling.max_pool2d keeps NCHW below CHANNELS_LAST_MIN)."""
    return pooling._MaxPoolChannelsLast.apply(x, kernel, stride, pad, ceil_mode)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--repeat", type=int, default=6)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, ms (best of {args.repeat}); input: ReLU of N(0,1), "
          f"channels-last from {pooling.CHANNELS_LAST_MIN} channels")
    print(f"{'net':<12} {'layer':<11} {'input':<18} {'NCHW fwd':>9} {'ch-last fwd':>11} {'ratio':>6} "
          f"{'NCHW f+b':>9} {'ch-last f+b':>11} {'ratio':>6}")
    for batch in args.batches:
        for net, layer, channels, size, kernel, stride in LAYERS:
            x = F.relu(torch.randn(batch, channels, size, size))
            ref_f, ref_fb = timings(nchw, x, kernel, stride, args.repeat)
            ours_f, ours_fb = timings(channels_last, x, kernel, stride, args.repeat)
            shape = f"{batch}x{channels}x{size}x{size}"
            print(f"{net:<12} {layer:<11} {shape:<18} {ref_f:>9.2f} {ours_f:>11.2f} {ours_f / ref_f:>5.2f}x "
                  f"{ref_fb:>9.2f} {ours_fb:>11.2f} {ours_fb / ref_fb:>5.2f}x")


if __name__ == "__main__":
    main()
