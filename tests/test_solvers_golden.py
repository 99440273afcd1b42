"""Every golden Caffe solver trace (tests/golden/solvers/*), step by step, plus snapshots.

Each case runs twice:

* ``engine``: the solver over the real ``engine.Net`` built from the case's net.prototxt
  (what users get);
* ``reference``: the solver over a small hand-written torch model of that same net
  (conv → ReLU → grouped bilinear deconv with lr_mult 0 → 1×1 conv → SoftmaxWithLoss), so the
  solver's update rules, LR policies, clipping, iter_size and snapshots are checked against
  Caffe independently of the Net implementation.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array
from caffeseg.engine.caffemodel import read_caffemodel, read_solverstate, write_caffemodel
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.solvers import get_solver

ROOT = os.path.join(os.path.dirname(__file__), "golden", "solvers")
CASES = sorted(os.listdir(ROOT))


def _close(got, want, what):
    got = np.asarray(got, np.float32).reshape(np.shape(want))
    scale = max(float(np.abs(want).max()), 1e-12)
    err = float(np.abs(got - want).max()) / scale
    assert err < 1e-5, f"{what}: relative error {err:.3g}"


class _RefBlob:
    def __init__(self, shape):
        self.tensor = torch.zeros(shape)
        self.grad_tensor = torch.zeros(shape)

    data = property(lambda self: self.tensor.numpy())
    diff = property(lambda self: self.grad_tensor.numpy())


class ReferenceNet:
    """Torch model of tests/golden/solvers/*/net.prototxt with the Net surface the solver uses."""

    def __init__(self, net_param, state, source):
        self.param = net_param
        self.params = {"conv1": [_RefBlob((4, 3, 3, 3)), _RefBlob((4,))], "up": [_RefBlob((4, 1, 3, 3))],
                       "score": [_RefBlob((2, 4, 1, 1)), _RefBlob((2,))]}
        specs = {layer.name: list(layer.param) for layer in net_param.layer}
        self.learnable_params = []
        for name in ("conv1", "up", "score"):  # Caffe's learnable order: layer order, blob order
            for i, blob in enumerate(self.params[name]):
                spec = specs[name][i] if i < len(specs[name]) else caffe_pb2.ParamSpec()
                self.learnable_params.append((blob, spec.lr_mult, spec.decay_mult))
        self.blobs = {"data": _RefBlob((4, 3, 6, 6)), "label": _RefBlob((4, 1, 6, 6)), "loss": _RefBlob(())}
        self.outputs = ["loss"]
        self.blob_loss_weights = {"loss": 1.0}

    def copy_from(self, path):
        for layer in read_caffemodel(path).layer:
            for blob, bp in zip(self.params.get(layer.name, []), layer.blobs):
                blob.tensor.copy_(torch.from_numpy(blobproto_to_array(bp, tuple(blob.tensor.shape))))

    def forward(self):
        p = {k: [b.tensor.detach().requires_grad_(k != "up") for b in v] for k, v in self.params.items()}
        h = F.relu(F.conv2d(self.blobs["data"].tensor, p["conv1"][0], p["conv1"][1], padding=1))
        h = F.conv_transpose2d(h, p["up"][0], None, padding=1, groups=4)
        score = F.conv2d(h, p["score"][0], p["score"][1])
        self._leaves, self._loss = p, F.cross_entropy(score, self.blobs["label"].tensor[:, 0].long())
        self.blobs["loss"].tensor.fill_(float(self._loss.detach()))
        return {"loss": self.blobs["loss"].data}

    def _forward_backward(self):
        self.forward()
        self.backward()

    @property
    def last_loss(self):
        return float(self._loss.detach())

    def backward(self):
        self._loss.backward()
        for name, blobs in self.params.items():
            for blob, leaf in zip(blobs, self._leaves[name]):
                if leaf.grad is not None:  # lr_mult 0: no gradient, like Caffe
                    blob.grad_tensor += leaf.grad

    def save(self, path):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(self.param)
        for layer in net.layer:
            for blob in self.params.get(layer.name, []):
                layer.blobs.append(array_to_blobproto(blob.tensor.numpy()))
        write_caffemodel(path, net)

    def share_with(self, other):
        pass


def _engine_factory():
    return None  # the solver's default: engine.Net


def _engine_cuda_factory():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _engine_factory()
    from caffeseg import engine
    engine.set_mode_gpu()  # nets built from now on live on the GPU; the fixture below resets
    return None


@pytest.fixture(autouse=True)
def _cpu_mode_afterwards():
    yield
    from caffeseg import engine
    engine.set_mode_cpu()


FACTORIES = {"reference": lambda: ReferenceNet, "engine": _engine_factory, "engine-cuda": _engine_cuda_factory}


def _feed(net, trace, it):
    for name in ("data", "label"):
        net.blobs[name].data[...] = trace[f"feed:{it}:{name}"]


def _solver(case, factory_name, monkeypatch):
    monkeypatch.chdir(os.path.join(ROOT, case))  # the solver's `net:` is relative to the cwd
    solver = get_solver("solver.prototxt", FACTORIES[factory_name]())
    solver.net.copy_from("init.caffemodel")
    return solver, np.load("trace.npz")


def _params(net, layer):
    return [blob.data for blob in net.params[layer]]


@pytest.mark.parametrize("factory", ["reference", "engine", "engine-cuda"])
@pytest.mark.parametrize("case", CASES)
def test_trajectory_matches_caffe(case, factory, monkeypatch, tmp_path):
    solver, trace = _solver(case, factory, monkeypatch)
    infos = []
    solver.add_iteration_listener(infos.append)
    steps = len(trace["loss"])
    for it in range(steps):
        _feed(solver.net, trace, it)
        solver.step(1)
        for key in trace.files:
            if key.startswith(f"after:{it}:"):
                _, _, layer, i = key.split(":")
                _close(_params(solver.net, layer)[int(i)], trace[key], f"{case} {key}")
    _close([i.loss for i in infos], trace["loss"], f"{case} loss")
    assert [i.iter for i in infos] == list(range(1, steps + 1))
    # our snapshot after the same trajectory holds the same arrays as Caffe's snap files
    solver.param.snapshot_prefix = str(tmp_path / "snap")
    model_path, state_path = solver.snapshot()
    assert os.path.basename(model_path) == "snap_iter_6.caffemodel"
    ours, caffes = read_solverstate(state_path), read_solverstate("snap_iter_6.solverstate")
    assert (ours.iter, ours.current_step) == (caffes.iter, caffes.current_step)
    assert ours.learned_net == model_path and os.path.basename(caffes.learned_net) == os.path.basename(model_path)
    assert len(ours.history) == len(caffes.history)
    for k, (a, b) in enumerate(zip(ours.history, caffes.history)):
        want = blobproto_to_array(b)
        assert tuple(a.shape.dim) == want.shape, f"history {k} shape"
        _close(blobproto_to_array(a), want, f"{case} history {k}")
    ours_model = {l.name: l.blobs for l in read_caffemodel(model_path).layer if len(l.blobs)}
    for layer in read_caffemodel("snap_iter_6.caffemodel").layer:
        for k, bp in enumerate(layer.blobs):
            _close(blobproto_to_array(ours_model[layer.name][k]), blobproto_to_array(bp), f"{layer.name} blob {k}")


@pytest.mark.parametrize("factory", ["reference", "engine", "engine-cuda"])
@pytest.mark.parametrize("case", ["sgd_fixed", "sgd_multistep", "adam", "adadelta"])
def test_restore_caffe_snapshot_and_continue(case, factory, monkeypatch):
    solver, trace = _solver(case, factory, monkeypatch)
    solver.restore("snap_iter_6.solverstate")
    state = read_solverstate("snap_iter_6.solverstate")
    assert solver.iter == 6 and solver.lr_policy.current_step == state.current_step
    for h, bp in zip(solver.history, state.history):
        _close(h.cpu().numpy(), blobproto_to_array(bp), f"{case} restored history")
    # learned_net was loaded: the weights are Caffe's after step 6
    _close(_params(solver.net, "conv1")[0], trace["after:5:conv1:0"], "restored conv1 weights")
    _feed(solver.net, trace, 5)
    solver.step(1)
    assert solver.iter == 7
    assert all(np.isfinite(b.data).all() for b, _, _ in solver.net.learnable_params)


def test_restore_rejects_a_state_of_another_solver_type(monkeypatch):
    solver, _ = _solver("sgd_fixed", "reference", monkeypatch)
    with pytest.raises(ValueError, match="holds 10 history blobs but this SGD solver has 5"):
        solver.restore(os.path.join(ROOT, "adam", "snap_iter_6.solverstate"))


@pytest.mark.parametrize("factory", ["reference", "engine"])
def test_solve_snapshots_and_resumes_bit_for_bit(factory, monkeypatch, tmp_path):
    """Snapshot at 3, continue to 6; a second solver resumed from the snapshot ends identical."""
    solver, trace = _solver("sgd_multistep", factory, monkeypatch)
    solver.param.snapshot = 3
    solver.param.snapshot_prefix = str(tmp_path / "run")
    for it in range(6):
        _feed(solver.net, trace, it)
        solver.step(1)
    assert os.path.exists(tmp_path / "run_iter_3.caffemodel") and os.path.exists(tmp_path / "run_iter_6.solverstate")
    resumed, _ = _solver("sgd_multistep", factory, monkeypatch)
    resumed.restore(str(tmp_path / "run_iter_3.solverstate"))
    assert resumed.iter == 3
    for it in range(3, 6):
        _feed(resumed.net, trace, it)
        resumed.step(1)
    for (a, _, _), (b, _, _) in zip(solver.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("case", CASES)
def test_update_by_slices_is_bit_identical_to_whole_tensors(case, monkeypatch):
    """``updates.slices`` (the update run slice by slice so its passes stay in cache) changes
    no bit: every golden case, with slices of 5 elements (conv1's 108 weights: 22 slices, the
    last one short) against one whole-tensor piece per parameter, step by step."""
    from caffeseg.engine.solvers import updates
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # slices are taken with one torch thread only
    try:
        _compare_whole_and_sliced(case, monkeypatch, updates)
    finally:
        torch.set_num_threads(threads)


def _compare_whole_and_sliced(case, monkeypatch, updates):
    runs = {}
    for label, size in (("whole", 1 << 62), ("sliced", 5)):
        monkeypatch.setattr(updates, "UPDATE_SLICE", size)
        pieces = []
        real_slices = updates.slices
        monkeypatch.setattr(updates, "slices", lambda *a, **k: pieces.append(list(real_slices(*a, **k))) or pieces[-1])
        solver, trace = _solver(case, "reference", monkeypatch)
        states = []
        for it in range(len(trace["loss"])):
            _feed(solver.net, trace, it)
            solver.step(1)
            states.append([b.data.copy() for b, _, _ in solver.net.learnable_params]
                          + [h.numpy().copy() for h in solver.history])
        runs[label] = (states, max(len(p) for p in pieces))
        monkeypatch.setattr(updates, "slices", real_slices)
    assert runs["whole"][1] == 1 and runs["sliced"][1] == 22
    for it, (whole, sliced) in enumerate(zip(runs["whole"][0], runs["sliced"][0])):
        for k, (a, b) in enumerate(zip(whole, sliced)):
            np.testing.assert_array_equal(a, b, err_msg=f"{case} step {it} array {k}")
