"""Solver rules that the golden traces do not pin down: LR policies at many iterations,
configuration errors, smoothed loss, test nets, observers, net/state selection."""
import math
import os

import numpy as np
import pytest
import torch

from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.prototxt import parse_solver
from caffeseg.engine.solvers import SolverConfigError, get_solver
from caffeseg.engine.solvers.lr_policy import LearningRate
from caffeseg.engine.solvers import updates

from tests.test_solvers_golden import ROOT, ReferenceNet, _feed


def _rates(text, iters):
    policy = LearningRate(parse_solver(text))
    return [policy.rate(i) for i in iters]


def test_lr_policies_follow_caffe_formulas():
    its = [0, 1, 2, 3, 5, 9]
    np.testing.assert_allclose(_rates('base_lr: 0.1 lr_policy: "fixed"', its), [0.1] * 6, rtol=1e-7)
    assert _rates('base_lr: 1 lr_policy: "step" gamma: 0.5 stepsize: 2', its) == [1, 1, 0.5, 0.5, 0.25, 0.0625]
    np.testing.assert_allclose(_rates('base_lr: 1 lr_policy: "exp" gamma: 0.5', its), [0.5 ** i for i in its])
    np.testing.assert_allclose(_rates('base_lr: 2 lr_policy: "inv" gamma: 0.1 power: 0.75', its),
                               [2 * (1 + 0.1 * i) ** -0.75 for i in its], rtol=1e-6)
    np.testing.assert_allclose(_rates('base_lr: 1 lr_policy: "poly" power: 2 max_iter: 10', its),
                               [(1 - i / 10) ** 2 for i in its])
    np.testing.assert_allclose(_rates('base_lr: 1 lr_policy: "sigmoid" gamma: 0.5 stepsize: 3', its),
                               [1 / (1 + math.exp(-0.5 * (i - 3))) for i in its], rtol=1e-6)


def test_multistep_advances_at_most_one_step_per_call():
    policy = LearningRate(parse_solver('base_lr: 1 lr_policy: "multistep" gamma: 0.1 stepvalue: 2 stepvalue: 3'))
    # jumping straight to iter 10 moves one step per call, like Caffe's stateful counter
    assert [round(policy.rate(10), 6) for _ in range(3)] == [0.1, 0.01, 0.01]
    assert policy.current_step == 2


@pytest.mark.parametrize("text, message", [
    ('base_lr: 1 lr_policy: "cosine"', "lr_policy 'cosine'"),
    ('base_lr: 1', "lr_policy '' is not one of"),
    ('base_lr: 1 lr_policy: "step" stepsize: 0', "needs stepsize > 0"),
    ('base_lr: 1 lr_policy: "exp" gamma: -1', "needs gamma >= 0"),
])
def test_bad_lr_policy_is_named(text, message):
    with pytest.raises(SolverConfigError, match=message):
        LearningRate(parse_solver(text))


@pytest.mark.parametrize("text, message", [
    ('type: "AdaGrad" momentum: 0.9', "AdaGrad solver requires momentum 0"),
    ('type: "RMSProp" rms_decay: 1.5', "rms_decay"),
    ('type: "Lion"', "solver type 'Lion'"),
    ('regularization_type: "L3"', "regularization_type 'L3'"),
])
def test_bad_solver_fields_are_named(text, message):
    with pytest.raises(SolverConfigError, match=message):
        updates.check_solver_param(parse_solver(text))


def test_clip_uses_one_global_norm():
    a, b = torch.tensor([3.0]), torch.tensor([4.0])
    assert updates.clip_gradients([a, b], 1.0) == 5.0
    np.testing.assert_allclose([float(a), float(b)], [0.6, 0.8], rtol=1e-6)
    c = torch.tensor([0.3])
    updates.clip_gradients([c], 1.0)  # under the threshold: untouched
    assert float(c) == pytest.approx(0.3)


def test_adam_epsilon_is_added_to_uncorrected_sqrt_v():
    p = parse_solver("momentum: 0.9 momentum2: 0.999 delta: 0.1")
    g = torch.tensor([0.5])
    m, v = torch.zeros(1), torch.zeros(1)
    updates.adam(g, [m, v], 1.0, p, 0)
    beta1, beta2, delta = 0.9, float(np.float32(0.999)), float(np.float32(0.1))
    expected = math.sqrt(1 - beta2) / (1 - beta1) * (0.05 / (math.sqrt((1 - beta2) * 0.25) + delta))
    assert float(g) == pytest.approx(expected, rel=1e-5)


def _solver(monkeypatch, extra, case="sgd_fixed"):
    monkeypatch.chdir(os.path.join(ROOT, case))
    text = open("solver.prototxt").read() + "\n" + extra
    param = parse_solver(text, "solver.prototxt")
    built = []

    def factory(net_param, state, source):
        net = ReferenceNet(net_param, state, source)
        net.state = state
        built.append(net)
        return net

    solver = get_solver(param, factory)
    solver.net.copy_from("init.caffemodel")
    return solver, np.load("trace.npz"), built


def test_smoothed_loss_uses_the_average_loss_window(monkeypatch):
    solver2, trace, _ = _solver(monkeypatch, "average_loss: 2")
    seen = []
    solver2.add_iteration_listener(seen.append)
    _feed(solver2.net, trace, 0)
    solver2.step(3)
    losses = [i.loss for i in seen]
    assert seen[0].smoothed_loss == pytest.approx(losses[0])
    assert seen[1].smoothed_loss == pytest.approx((losses[0] + losses[1]) / 2)
    assert seen[2].smoothed_loss == pytest.approx((losses[1] + losses[2]) / 2)
    assert [i.lr for i in seen] == [pytest.approx(0.05)] * 3


def test_callbacks_run_around_the_update(monkeypatch):
    solver, trace, _ = _solver(monkeypatch, "")
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)),
                        lambda: events.append(("grads", solver.iter, float(np.abs(solver.net.params["conv1"][0].diff).sum()) > 0)))
    _feed(solver.net, trace, 0)
    solver.step(2)
    assert events == [("start", 0), ("grads", 0, True), ("start", 1), ("grads", 1, True)]


def test_test_nets_states_and_schedule(monkeypatch):
    extra = ('test_iter: 2 test_interval: 2 test_initialization: false '
             'train_state { stage: "train" } test_state { stage: "val" level: 3 }')
    solver, trace, built = _solver(monkeypatch, extra)
    assert len(solver.test_nets) == 1
    assert built[0].state.phase == caffe_pb2.TRAIN and list(built[0].state.stage) == ["train"]
    assert built[1].state.phase == caffe_pb2.TEST and list(built[1].state.stage) == ["val"]
    assert built[1].state.level == 3
    results = []
    solver.add_test_listener(results.append)
    _feed(solver.net, trace, 0)
    solver.step(5)
    assert [r.iter for r in results] == [2, 4]  # not at 0 (test_initialization false)
    assert set(results[0].outputs) == {"loss"}


@pytest.mark.parametrize("extra, message", [
    ('train_net: "net.prototxt"', "exactly one of train_net_param, train_net, net_param, net"),
    ("test_iter: 1", "test nets need test_interval > 0"),
    ("test_iter: 1 test_interval: 1 test_state { stage: 'a' } test_state { stage: 'b' }", "test_state has 2 entries"),
])
def test_net_selection_errors(monkeypatch, extra, message):
    with pytest.raises(SolverConfigError, match=message):
        _solver(monkeypatch, extra)


def test_weights_field_is_copied_into_every_net(monkeypatch):
    solver, _, built = _solver(monkeypatch, 'weights: "init.caffemodel" test_iter: 1 test_interval: 10')
    init = solver.net.params["conv1"][0].data.copy()
    assert np.abs(init).sum() > 0
    np.testing.assert_array_equal(built[1].params["conv1"][0].data, init)


def test_default_snapshot_prefix_is_the_solver_path_stem(monkeypatch, tmp_path):
    from caffeseg.engine.solvers import Solver
    monkeypatch.chdir(os.path.join(ROOT, "sgd_fixed"))
    text = open("solver.prototxt").read().replace('snapshot_prefix: "snap"', "")
    path = tmp_path / "my_solver.prototxt"
    path.write_text(text.replace('net: "net.prototxt"', f'net: "{os.path.join(ROOT, "sgd_fixed", "net.prototxt")}"'))
    solver = Solver(str(path), ReferenceNet)
    assert solver.snapshot_paths()[0] == str(tmp_path / "my_solver_iter_0.caffemodel")


def test_test_compute_loss_reports_the_mean_objective(monkeypatch):
    solver, trace, _ = _solver(monkeypatch, "test_iter: 3 test_interval: 100 test_compute_loss: true")
    _feed(solver.test_nets[0], trace, 0)
    solver.test_nets[0].copy_from("init.caffemodel")
    result = solver.test(0)
    assert result.loss == pytest.approx(result.outputs["loss"]) and result.loss == pytest.approx(trace["loss"][0], rel=1e-5)


def test_solve_trains_from_lmdb_data_layers_with_tests_and_snapshots(monkeypatch, tmp_path):
    from caffeseg.engine.datum import array_to_datum
    from caffeseg.engine.lmdb_io import LmdbWriter
    gen = np.random.default_rng(0)
    with LmdbWriter(str(tmp_path / "train_db")) as w:
        for i in range(5):
            image = gen.integers(0, 255, (1, 6, 6), dtype=np.uint8)
            w.put("%05d" % i, array_to_datum(image, label=int(image.mean() > 127)).SerializeToString())
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "data" top: "label" transform_param { scale: 0.0039 mirror: true '
        'crop_size: 4 } data_param { source: "train_db" backend: LMDB batch_size: 2 } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }\n')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 2 momentum: 0.9 max_iter: 4 '
        'test_iter: 2 test_interval: 2 snapshot: 2 snapshot_prefix: "out/run" display: 1 random_seed: 5 type: "Nesterov"')
    monkeypatch.chdir(tmp_path)
    solver = get_solver("solver.prototxt")
    tests, infos = [], []
    solver.add_test_listener(tests.append)
    solver.add_iteration_listener(infos.append)
    solver.solve()
    assert solver.iter == 4 and [i.iter for i in infos] == [1, 2, 3, 4]
    assert [i.lr for i in infos] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert [t.iter for t in tests] == [0, 2, 4] and set(tests[0].outputs) == {"acc", "loss"}
    for n in (2, 4):
        assert (tmp_path / f"out/run_iter_{n}.caffemodel").exists()
        state = read_solverstate_path(tmp_path / f"out/run_iter_{n}.solverstate")
        assert state.iter == n and state.learned_net == f"out/run_iter_{n}.caffemodel"
    again = get_solver("solver.prototxt")
    again.restore("out/run_iter_2.solverstate")
    np.testing.assert_array_equal(again.history[0].numpy(), np.array(read_solverstate_path(
        tmp_path / "out/run_iter_2.solverstate").history[0].data).reshape(again.history[0].shape))
    again.step(1)
    assert again.iter == 3


def read_solverstate_path(path):
    from caffeseg.engine.caffemodel import read_solverstate
    return read_solverstate(str(path))


@pytest.fixture
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_update_slices_are_views_of_the_parameter(one_torch_thread):
    weight, diff = torch.arange(10.0), torch.ones(10)
    history = [torch.zeros(10), torch.zeros(10)]
    pieces = list(updates.slices(weight, diff, history, size=4))
    assert [w.numel() for w, _, _ in pieces] == [4, 4, 2]
    for w, d, h in pieces:
        w.sub_(d)
        h[1].add_(1)
    assert torch.equal(weight, torch.arange(10.0) - 1) and torch.equal(history[1], torch.ones(10))
    # a non-contiguous tensor, or one of another size, is updated as one whole piece
    strided = torch.zeros(10, 2)[:, 0]
    assert len(list(updates.slices(strided, diff, history, size=4))) == 1
    assert len(list(updates.slices(weight, diff, [torch.zeros(9)], size=4))) == 1
    assert len(list(updates.slices(weight, diff, history, size=10))) == 1
    # with several torch threads every slice's operation would wake the pool: one whole piece
    torch.set_num_threads(2)
    assert len(list(updates.slices(weight, diff, history, size=4))) == 1
