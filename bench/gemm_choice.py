"""torch's CPU sgemm (MKL in the CPU wheels) against numpy's (OpenBLAS) on the GEMM shapes of
FCN-AlexNet's fc6/fc7 at 256², interleaved, best of --rounds each: the measurement behind
engine/layer_types/fast_conv.py's choice of BLAS.

    .venv/bin/python bench/gemm_choice.py --threads 1
    OPENBLAS_NUM_THREADS=2 .venv/bin/python bench/gemm_choice.py --threads 2
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/gemm_choice.py --cold

``--cold``: each shape in a fresh process through numpy's OpenBLAS, three products before and
three after ``fast_conv.prime_openblas`` (one product with a wide right-hand side), best of each:
the measurement behind that warm-up.

Set OPENBLAS_NUM_THREADS to the same count as --threads (numpy's pool is sized when it loads).
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

# (rows, inner, cols): fc6 forward W·cols, fc7 forward, fc6 dcols = Wᵀ·dy, fc6 dW = dy·colsᵀ
SHAPES = [(4096, 9216, 81, "fc6 forward"), (4096, 4096, 81, "fc7 forward"),
          (9216, 4096, 81, "fc6 input grad"), (4096, 81, 9216, "fc6 weight grad")]


def _cold_child(index):
    """In a fresh process: best of 3 numpy products of SHAPES[index] before the warm-up, then after."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    m, k, n, _ = SHAPES[index]
    rs = np.random.RandomState(0)
    a, b = rs.rand(m, k).astype(np.float32), rs.rand(k, n).astype(np.float32)

    def best_of_3():
        times = []
        for _ in range(3):
            start = time.process_time()
            np.matmul(a, b)
            times.append(time.process_time() - start)
        return min(times)

    cold = best_of_3()
    from caffeseg.engine.layer_types import fast_conv  # importing it runs no product
    fast_conv.prime_openblas()
    print(f"{cold:.4f} {best_of_3():.4f}")


def cold_table():
    print(f"{'GEMM':<16} {'shape':<18} {'cold s':>8} {'primed s':>8} {'cold/primed':>11}   (CPU s, best of 3)")
    for i, (m, k, n, what) in enumerate(SHAPES):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cold-child", str(i)],
                             check=True, capture_output=True, text=True).stdout.split()
        cold, primed = float(out[0]), float(out[1])
        print(f"{what:<16} {f'{m}x{k}x{n}':<18} {cold:>8.4f} {primed:>8.4f} {cold / primed:>10.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--cold", action="store_true", help="numpy's products before and after the warm-up")
    ap.add_argument("--cold-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold_child is not None:
        return _cold_child(args.cold_child)
    if args.cold:
        return cold_table()
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
