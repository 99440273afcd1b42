"""One inference on borrowed cores (jobs.infer.cpu_threads, engine.device.set_cpu_threads): the
engine computes the block with the asked thread count, torch's pool and numpy's OpenBLAS alike,
and goes back afterwards; nothing changes for real pycaffe or while another prediction borrows."""
import subprocess
import sys
import textwrap

import torch

from caffeseg.engine import caffe_shim
from caffeseg.jobs import infer as inf


def test_a_block_runs_with_the_asked_threads_and_the_count_comes_back():
    engine = caffe_shim.install()
    before = torch.get_num_threads()
    with inf.cpu_threads(engine, before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_nothing_changes_for_real_pycaffe_none_or_a_second_borrower():
    engine = caffe_shim.install()
    before = torch.get_num_threads()

    class RealPycaffe:  # no __caffeseg_engine__ marker
        pass
    for caffe, count in ((RealPycaffe(), before + 1), (engine, None)):
        with inf.cpu_threads(caffe, count):
            assert torch.get_num_threads() == before
    with inf.cpu_threads(engine, before + 1):
        with inf.cpu_threads(engine, before + 2):  # the lock is held: this one keeps the current count
            assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_numpy_openblas_grows_its_pool_when_asked():
    """Started with one OpenBLAS thread (the inference plan's environment), the pool grows to two
    on request, products stay right, and it can be set back."""
    code = textwrap.dedent("""
        import numpy as np
        from caffeseg.engine.layer_types import fast_conv
        counts = [fast_conv.blas_threads()]
        assert fast_conv.set_blas_threads(2)
        counts.append(fast_conv.blas_threads())
        a = np.arange(600 * 600, dtype=np.float32).reshape(600, 600) % 7
        assert np.allclose(a @ a, (a.astype(np.float64) @ a).astype(np.float32))
        fast_conv.set_blas_threads(1)
        counts.append(fast_conv.blas_threads())
        print(counts)
    """)
    env = {"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=caffe_shim.__file__.rsplit("/engine/", 1)[0])
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.strip().splitlines()[-1] == "[1, 2, 1]"
