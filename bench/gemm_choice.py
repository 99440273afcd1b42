"""torch's CPU sgemm (MKL in the CPU wheels) against numpy's (OpenBLAS) on the GEMM shapes of
FCN-AlexNet's fc6/fc7 at 256², interleaved, best of --rounds each: the measurement behind
engine/layer_types/fast_conv.py's choice of BLAS.

    .venv/bin/python bench/gemm_choice.py --threads 1
    OPENBLAS_NUM_THREADS=2 .venv/bin/python bench/gemm_choice.py --threads 2

Set OPENBLAS_NUM_THREADS to the same count as --threads (numpy's pool is sized when it loads).
"""
import argparse
import os
import time

import numpy as np
import torch

# (rows, inner, cols): fc6 forward W·cols, fc7 forward, fc6 dcols = Wᵀ·dy, fc6 dW = dy·colsᵀ
SHAPES = [(4096, 9216, 81, "fc6 forward"), (4096, 4096, 81, "fc7 forward"),
          (9216, 4096, 81, "fc6 input grad"), (4096, 81, 9216, "fc6 weight grad")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"torch {torch.__version__} ({args.threads} threads), numpy {np.__version__} "
          f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}); best of {args.rounds}; "
          f"load {load}")
    print(f"{'GEMM':<16} {'shape':<18} {'torch GF/s':>10} {'numpy GF/s':>10} {'numpy/torch time':>17}")
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)) for m, k, n, _ in SHAPES]
    best = {}
    for _ in range(args.rounds):
        for i, (a, b) in enumerate(cases):
            an, bn = a.numpy(), b.numpy()
            for name, fn in (("torch", lambda: torch.mm(a, b)), ("numpy", lambda: an @ bn)):
                start = time.perf_counter()
                fn()
                best[i, name] = min(best.get((i, name), float("inf")), time.perf_counter() - start)
    for i, (m, k, n, what) in enumerate(SHAPES):
        flops = 2.0 * m * k * n
        t, nu = best[i, "torch"], best[i, "numpy"]
        print(f"{what:<16} {f'{m}x{k}x{n}':<18} {flops / t / 1e9:>10.1f} {flops / nu / 1e9:>10.1f} {nu / t:>16.2f}x")


if __name__ == "__main__":
    main()
