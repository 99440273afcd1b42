"""BVLC's own pycaffe test suite (``python/caffe/test/`` of the pristine Caffe source in
``../shared/third_party/``) run unchanged on the engine.

The files are unpacked from the tarball into a temporary folder (with the ``models/`` and
``examples/`` prototxts that ``test_draw`` walks) and run by pytest in a subprocess whose
``import caffe`` resolves to the engine through the project's ``caffe`` proxy package
(``engine/pycaffe_proxy/``), exactly as a user's script would. Nothing is skipped on the engine. The one
NCCL test (``test_nccl.py::TestNCCL::test_newuid``) checks ``caffe.NCCL.new_uid`` only when
``caffe.has_nccl()`` is True (otherwise it checks nothing). No test needs CUDA (pycaffe's tests
run on the CPU).

Also from the same source, unchanged: ``python/draw_net.py`` (renders CaffeNet), and the pycaffe
example ``examples/pycaffe/linreg.prototxt`` with its Python loss layer ``layers/pyloss.py``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT.parent / "shared" / "third_party" / "bvlc-caffe-9b891540.tar.gz"
TOP = "caffe-9b891540/"
TEST_FILES = ["test_coord_map.py", "test_draw.py", "test_io.py", "test_layer_type_list.py", "test_nccl.py",
              "test_net.py", "test_net_spec.py", "test_python_layer.py",
              "test_python_layer_with_param_str.py", "test_solver.py"]
#: tests that may be skipped on the engine, and why (none today)
ALLOWED_SKIPS: dict[str, str] = {}

pytestmark = pytest.mark.slow


def _wanted(name: str) -> bool:
    rest = name[len(TOP):] if name.startswith(TOP) else None
    if rest is None:
        return False
    if rest.startswith("python/caffe/test/"):
        return rest.endswith(".py")
    if rest in ("python/draw_net.py", "examples/pycaffe/layers/pyloss.py"):
        return True
    return rest.endswith(".prototxt") and rest.split("/")[0] in ("models", "examples")


def _unpack(into: Path) -> Path:
    with tarfile.open(TARBALL) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _wanted(m.name)]
        for member in members:
            if os.path.isabs(member.name) or ".." in Path(member.name).parts:
                raise AssertionError(f"unsafe path in {TARBALL}: {member.name}")
        tar.extractall(into, members=members)
    return into / TOP / "python" / "caffe" / "test"


def _engine_env() -> dict:
    # The proxy folder first, so a real pycaffe elsewhere on the path cannot answer `import caffe`
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "engine" / "pycaffe_proxy"), str(ROOT)])
    env.pop("CAFFESEG_TEST_GPU", None)
    return env


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    if not TARBALL.is_file():
        pytest.skip(f"BVLC Caffe source tarball not found at {TARBALL} (it lives in the shared folder beside "
                    "the project checkout; a plain clone does not have it)")
    return _unpack(tmp_path_factory.mktemp("bvlc"))


def test_import_caffe_in_the_suite_subprocess_is_the_engine(suite_dir):
    out = subprocess.run([sys.executable, "-c", "import caffe; from caffeseg import engine; print(caffe is engine)"],
                         env=_engine_env(), cwd=suite_dir, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_bvlc_pycaffe_suite_passes_on_the_engine(suite_dir, tmp_path):
    assert sorted(p.name for p in suite_dir.glob("test_*.py")) == sorted(TEST_FILES)
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's `dot` is missing; BVLC's test_draw renders with it (make graphviz-deps)")
    report = tmp_path / "report.xml"
    work = tmp_path / "cwd"  # test_solver snapshots into the working directory
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--junitxml={report}", str(suite_dir)],
        env=_engine_env(), cwd=work, capture_output=True, text=True, timeout=1500)
    cases = ET.parse(report).getroot().iter("testcase")
    results = {}
    for case in cases:
        # classname is the dotted path from pytest's rootdir: ...python.caffe.test.test_net.TestNet
        module, cls = case.get("classname").split(".")[-2:]
        name = f"{module}.py::{cls}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                results[name] = (outcome, (child.get("message") or "")[:300])
        results.setdefault(name, (outcome, ""))
    bad = {n: r for n, r in results.items() if r[0] in ("failure", "error")}
    skipped = {n: r[1] for n, r in results.items() if r[0] == "skipped" and n not in ALLOWED_SKIPS}
    assert not bad, f"BVLC pycaffe tests failing on the engine: {bad}\n{out.stdout[-4000:]}"
    assert not skipped, f"BVLC pycaffe tests skipped on the engine: {skipped}"
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    # every file contributed tests (a file that fails to import would show as an error above)
    assert {n.split("::")[0] for n in results} == set(TEST_FILES), sorted(results)
    assert len(results) == 52, sorted(results)


def test_bvlc_draw_net_script_runs_unchanged(suite_dir, tmp_path):
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's `dot` is missing (make graphviz-deps)")
    source = suite_dir.parents[2]
    out_png = tmp_path / "caffenet.png"
    out = subprocess.run(
        [sys.executable, str(source / "python" / "draw_net.py"),
         str(source / "models" / "bvlc_reference_caffenet" / "train_val.prototxt"), str(out_png),
         "--rankdir", "TB", "--phase", "TEST", "--display_lrm"],
        env=_engine_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"Drawing net to {out_png}"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bvlc_pyloss_example_layer_trains_linreg(suite_dir, monkeypatch):
    """examples/pycaffe/linreg.prototxt with its Python EuclideanLossLayer (pyloss.py), both
    unchanged: the loss and the gradients are the closed-form Euclidean ones."""
    import numpy as np
    from caffeseg.engine import caffe_shim
    caffe = caffe_shim.install()
    source = suite_dir.parents[2]
    monkeypatch.syspath_prepend(str(source / "examples" / "pycaffe" / "layers"))
    net = caffe.Net(str(source / "examples" / "pycaffe" / "linreg.prototxt"), caffe.TRAIN)
    loss = net.forward()["loss"].item()  # pyloss shapes its top (1,)
    ipx, ipy = net.blobs["ipx"].data.copy(), net.blobs["ipy"].data.copy()
    n = ipx.shape[0]
    np.testing.assert_allclose(loss, ((ipx - ipy) ** 2).sum() / n / 2, rtol=1e-5)
    net.backward()
    np.testing.assert_allclose(net.blobs["ipx"].diff, (ipx - ipy) / n, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs["ipy"].diff, -(ipx - ipy) / n, rtol=1e-5, atol=1e-7)
    x = net.blobs["x"].data.reshape(n, -1)
    np.testing.assert_allclose(net.params["ipx"][0].diff, ((ipx - ipy) / n).T @ x, rtol=1e-4, atol=1e-6)
