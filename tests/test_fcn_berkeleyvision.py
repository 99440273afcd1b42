"""fcn.berkeleyvision.org on the engine: its ``net.py`` generators regenerate the prototxts it
ships, and its ``surgery.py`` and ``score.py`` work on engine nets.

The FCN files are third-party fixtures in ``tests/third_party/fcn/`` (see its README: source
commit, license); ``CAFFESEG_FCN_DIR`` may name a full checkout to check all fifteen nets.

* Generators run unchanged, as ``python net.py`` in a fresh folder with ``import caffe`` resolving
  to the engine (the project's ``caffe`` proxy). The output must equal the shipped file line for
  line, except the Python data layer's ``param_str``: FCN wrote it with Python 2, where
  ``str(dict)`` lists keys in hash order; under Python 3 they come in insertion order. Those
  lines must hold the same dict (compared with ``ast.literal_eval``).
* ``surgery.py`` and ``score.py`` are Python 2 files (``print`` statements). They are loaded with
  exactly one mechanical change, each ``print a, b`` statement becoming ``print(a, b)``; the test
  checks that no other line differs.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from caffeseg.engine import caffe_shim

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "third_party" / "fcn"
caffe = caffe_shim.install()


def _net_dirs(base: Path):
    return sorted(p.parent for p in base.glob("*/net.py"))


def _all_net_dirs():
    dirs = _net_dirs(FIXTURES)
    extra = os.environ.get("CAFFESEG_FCN_DIR")
    if extra:
        dirs += _net_dirs(Path(extra))
    return dirs


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "engine" / "pycaffe_proxy"), str(ROOT)])
    return env


PARAM_STR = re.compile(r'^(\s*)param_str: "(.*)"$')


def _param_str_value(line: str):
    match = PARAM_STR.match(line)
    if not match:
        return None
    return ast.literal_eval(match.group(2).replace("\\'", "'"))


def test_fixture_set_is_complete():
    assert [d.name for d in _net_dirs(FIXTURES)] == sorted(
        ["voc-fcn8s", "voc-fcn32s", "voc-fcn-alexnet", "voc-fcn8s-atonce", "nyud-fcn32s-color-d",
         "nyud-fcn32s-color-hha", "siftflow-fcn8s"])


@pytest.mark.slow
@pytest.mark.parametrize("net_dir", _all_net_dirs(), ids=lambda d: f"{d.parent.name}/{d.name}")
def test_net_py_regenerates_the_shipped_prototxts(net_dir, tmp_path):
    shipped = sorted(p.name for p in net_dir.glob("*.prototxt") if p.stem in ("train", "val", "trainval", "test"))
    assert len(shipped) == 2, shipped
    work = tmp_path / net_dir.name
    work.mkdir()
    shutil.copy(net_dir / "net.py", work / "net.py")
    out = subprocess.run([sys.executable, "net.py"], cwd=work, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in shipped:
        expected = (net_dir / name).read_text().splitlines()
        produced = (work / name).read_text().splitlines()
        assert len(produced) == len(expected), name
        differing = [(e, p) for e, p in zip(expected, produced) if e != p]
        for e, p in differing:
            want, got = _param_str_value(e), _param_str_value(p)
            assert want is not None and got is not None, f"{net_dir.name}/{name}: {p!r} != {e!r}"
            assert got == want, f"{net_dir.name}/{name}: param_str {got} != {want}"
        assert len(differing) <= 1, differing  # only the data layer's param_str


# ---------------------------------------------------------------------------------------------
# surgery.py and score.py
# ---------------------------------------------------------------------------------------------
PRINT = re.compile(r"^(\s*)print (.*)$")


def _load_python2_module(path: Path, name: str) -> types.ModuleType:
    """The module with its ``print`` statements turned into calls (continuation lines joined);
    every other line is kept as it is, which the assertion checks."""
    lines = path.read_text().splitlines()
    converted, i = [], 0
    while i < len(lines):
        line = lines[i]
        match = PRINT.match(line)
        if match:
            statement = match.group(2)
            while statement.endswith("\\"):
                i += 1
                statement = statement[:-1].rstrip() + " " + lines[i].strip()
            converted.append(f"{match.group(1)}print({statement})")
        else:
            converted.append(line)
        i += 1
    kept = [line for line in converted if not PRINT.match(line) and not line.lstrip().startswith("print(")]
    original_kept = [line for line in lines if not PRINT.match(line)]
    assert all(line in original_kept for line in kept), "only print statements may change"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile("\n".join(converted) + "\n", str(path), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def surgery():
    return _load_python2_module(FIXTURES / "surgery.py", "fcn_surgery")


@pytest.fixture(scope="module")
def score():
    return _load_python2_module(FIXTURES / "score.py", "fcn_score")


FC_NET = """
name: "fc"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "extra" type: "InnerProduct" bottom: "fc6" top: "extra" inner_product_param { num_output: 2 } }
"""

FCN_NET = """
name: "fcn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "fc6" type: "Convolution" bottom: "data" top: "fc6" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "up" type: "Deconvolution" bottom: "fc6" top: "up"
  convolution_param { num_output: 4 group: 4 kernel_size: 4 stride: 2 bias_term: false } }
"""


def _net(tmp_path, text, name):
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST)


def test_surgery_transplant_coerces_fc_to_conv_and_interp_sets_bilinear(surgery, tmp_path, capsys):
    fc = _net(tmp_path, FC_NET, "fc")
    conv = _net(tmp_path, FCN_NET, "conv")
    surgery.transplant(conv, fc)
    printed = capsys.readouterr().out
    assert "coercing fc6 0 from (4, 18) to (4, 2, 3, 3)" in printed and "dropping extra" in printed
    np.testing.assert_array_equal(conv.params["fc6"][0].data.reshape(4, 18), fc.params["fc6"][0].data)
    np.testing.assert_array_equal(conv.params["fc6"][1].data, fc.params["fc6"][1].data)
    # the fully connected net's output equals the convolutional one at its single position
    x = np.random.RandomState(0).randn(1, 2, 3, 3).astype(np.float32)
    fc_out = fc.forward(data=x)
    conv.blobs["data"].reshape(1, 2, 3, 3)
    conv.reshape()
    conv.blobs["data"].data[...] = x
    conv.forward(end="fc6")
    np.testing.assert_allclose(conv.blobs["fc6"].data.ravel(), fc.blobs["fc6"].data.ravel(), rtol=1e-5)
    assert set(fc_out) == {"extra"}

    # upsample_filt(4): factor 2, center 1.5, 1-D profile (1 - |i - 1.5|/2) = [.25, .75, .75, .25]
    profile = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(surgery.upsample_filt(4), np.outer(profile, profile))
    surgery.interp(conv, ["up"])  # group 4: weights 4 x 1 x 4 x 4
    weights = conv.params["up"][0].data
    for m in range(4):
        np.testing.assert_allclose(weights[m, 0], np.outer(profile, profile), rtol=1e-6)


SEG_NET = """
name: "seg"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 3 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  param { lr_mult: 0 } param { lr_mult: 0 }
  convolution_param { num_output: 2 kernel_size: 1
    weight_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { normalize: false } }
"""


def _printed_value(printed: str, what: str) -> float:
    match = re.search(re.escape(what) + r" ([-+0-9.eE]+|nan)\b", printed)
    assert match, (what, printed)
    return float(match.group(1))


def _seg_net(tmp_path):
    net = _net(tmp_path, SEG_NET, "seg")
    # class 0 scores +x, class 1 scores -x: positive pixels are predicted 0, negative ones 1
    net.params["score"][0].data[...] = np.array([1, -1], np.float32).reshape(2, 1, 1, 1)
    net.blobs["data"].data[...] = np.array([[1, -2, 3], [-1, 2, -3]], np.float32)
    net.blobs["label"].data[...] = np.array([[0, 0, 1], [1, 1, 1]], np.float32)
    return net


def test_score_compute_hist_and_do_seg_tests(score, tmp_path, capsys):
    net = _seg_net(tmp_path)
    save_dir = tmp_path / "out"
    hist, loss = score.compute_hist(net, str(save_dir), ["a", "b"])
    # predictions [[0, 1, 0], [1, 0, 1]] against labels [[0, 0, 1], [1, 1, 1]], twice:
    # gt 0: pred 0 once, pred 1 once; gt 1: pred 0 twice, pred 1 twice (per pass)
    np.testing.assert_array_equal(hist, 2 * np.array([[1, 1], [2, 2]]))
    x = np.array([1, -2, 3, -1, 2, -3], np.float64)
    label = np.array([0, 0, 1, 1, 1, 1])
    logits = np.stack([x, -x], 1)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -log_p[np.arange(6), label].sum(), rtol=1e-5)
    assert sorted(os.listdir(save_dir)) == ["a.png", "b.png"]
    capsys.readouterr()
    hist = score.do_seg_tests(net, 7, False, ["a"])
    printed = capsys.readouterr().out
    # overall accuracy (1 + 2)/6 = 0.5; per-class IU: 1/(2+3-1) = 0.25 and 2/(4+3-2) = 0.4
    assert _printed_value(printed, "overall accuracy") == pytest.approx(0.5)
    assert _printed_value(printed, "mean IU") == pytest.approx(0.325)
    assert "Iteration 7 " in printed
    np.testing.assert_array_equal(hist, np.array([[1, 1], [2, 2]]))


def test_score_seg_tests_shares_the_solver_weights(score, tmp_path, capsys):
    _seg_net(tmp_path)  # writes seg.prototxt
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{tmp_path / "seg.prototxt"}" test_iter: 1 test_interval: 1000 base_lr: 0.1 '
                           f'lr_policy: "fixed" max_iter: 1 snapshot_prefix: "{tmp_path}/snap"\n')
    solver = caffe.SGDSolver(str(solver_file))
    solver.net.params["score"][0].data[...] = np.array([1, -1], np.float32).reshape(2, 1, 1, 1)
    test_net = solver.test_nets[0]
    test_net.blobs["data"].data[...] = np.array([[1, -2, 3], [-1, 2, -3]], np.float32)
    test_net.blobs["label"].data[...] = 0
    score.seg_tests(solver, False, ["only"])
    printed = capsys.readouterr().out
    # all labels 0, predictions 0 where data > 0 (3 of 6): accuracy 0.5, per-class acc [0.5, nan]
    assert _printed_value(printed, "overall accuracy") == pytest.approx(0.5)
    assert _printed_value(printed, "mean accuracy") == pytest.approx(0.5)
    assert "Iteration 0 " in printed
    np.testing.assert_array_equal(test_net.params["score"][0].data.ravel(), [1, -1])
