"""Network and solver derivation against worked examples (numbers computed by hand here)."""
import math
import os

import pytest

from caffeseg.engine.prototxt import parse_net
from caffeseg.jobs import derive
from tests.jobs_fixtures import TINY_NET, make_dataset_dir


def solver(train=100, val=10, batch=16, val_batch=4, **options):
    return derive.derive_solver(train, val, batch, val_batch, options)


def test_epochs_to_iterations_and_intervals():
    s = solver(epochs=2)
    # T = ceil(100 / 16) = 7 iterations per epoch; 2 epochs = 14
    assert s.max_iter == 14
    assert s.snapshot == 7 and s.test_interval == 7
    assert list(s.test_iter) == [3]  # ceil(10 / 4)
    assert s.snapshot_prefix == "snapshot"
    assert list(s.train_state.stage) == ["train"] and list(s.test_state[0].stage) == ["val"]


def test_batch_accumulation_divides_iterations():
    s = solver(epochs=3, iter_size=2)
    assert s.iter_size == 2 and s.max_iter == 4 * 3  # ceil(100 / 32) = 4


def test_interval_rounding_rules():
    assert solver(epochs=2, snapshot_interval=0.1).snapshot == 1      # 0.7 iterations → 1
    assert solver(epochs=2, snapshot_interval=2).snapshot == 0        # 14 is not < 14 → only at end
    assert solver(epochs=2, val_interval=2).test_interval == 14       # test once at the end
    assert solver(epochs=4, snapshot_interval=1.5).snapshot == 10     # int(10.5)


def test_no_validation_without_val_set():
    s = solver(val=0, epochs=2)
    assert len(s.test_iter) == 0 and not s.HasField("test_interval")


def test_lr_policies_in_percent_of_training():
    # 1000 records, batch 10 → 100 iterations/epoch, 2 epochs → 200; scale = 2
    kw = dict(train=1000, batch=10, epochs=2)
    s = solver(lr_policy={"policy": "step", "stepsize": 33, "gamma": 0.5}, **kw)
    assert s.stepsize == 66 and s.gamma == pytest.approx(0.5)
    s = solver(lr_policy={"policy": "multistep", "stepvalue": "50,85", "gamma": 0.1}, **kw)
    assert list(s.stepvalue) == [100, 170]
    s = solver(lr_policy={"policy": "exp", "gamma": 0.95}, **kw)
    assert s.gamma == pytest.approx(0.95 ** 0.5)
    s = solver(lr_policy={"policy": "inv", "gamma": 0.1, "power": 0.5}, **kw)
    assert s.gamma == pytest.approx(0.05) and s.power == pytest.approx(0.5)
    s = solver(lr_policy={"policy": "poly", "power": 3}, **kw)
    assert s.power == pytest.approx(3)
    s = solver(lr_policy={"policy": "sigmoid", "gamma": 0.1, "stepsize": 50}, **kw)
    assert s.gamma == pytest.approx(-0.05) and s.stepsize == 100
    with pytest.raises(derive.DeriveError, match="unknown lr_policy"):
        solver(lr_policy={"policy": "cosine"})


def test_solver_types_weight_decay_momentum_display_seed():
    s = solver(base_lr=0.02, epochs=2)
    assert s.type == "SGD" and s.momentum == pytest.approx(0.9)
    assert s.weight_decay == pytest.approx(0.0002)  # base_lr / 100, DIGITS' hidden default
    assert solver(weight_decay=0.0005).weight_decay == pytest.approx(0.0005)
    s = solver(solver_type="AdaGrad")
    assert s.type == "AdaGrad" and not s.HasField("momentum")
    s = solver(solver_type="RMSProp", rms_decay=0.95)
    assert not s.HasField("momentum") and s.rms_decay == pytest.approx(0.95)
    assert solver(solver_type="Adam").momentum == pytest.approx(0.9)
    with pytest.raises(derive.DeriveError, match="solver type"):
        solver(solver_type="LBFGS")
    # display: min(floor(14 / (2*8)) = 0, ceil(5000/16) = 313) → max(1, 0) = 1
    assert solver(epochs=2).display == 1
    # 10000 records, batch 10: 1000 it/epoch; floor(2000/16)=125, ceil(5000/10)=500 → 125
    assert solver(train=10000, batch=10, epochs=2).display == 125
    assert solver(random_seed=7).random_seed == 7 and not solver().HasField("random_seed")


def test_sweep_values():
    assert derive.sweep("0.01, 0.001") == ["0.01", "0.001"]
    assert derive.sweep(0.1) == [0.1]


@pytest.fixture
def dataset(tmp_path):
    return derive.DatasetFacts.load(make_dataset_dir(str(tmp_path / "ds"), shape=(1, 8, 8)))


def test_networks_point_at_dataset_and_deploy_gets_input(dataset):
    train_val, deploy = derive.derive_networks(parse_net(TINY_NET), dataset,
                                               {"batch_size": 4, "set_num_output": True})
    data = {l.name: l for l in train_val.layer if l.type == "Data"}
    assert data["train_data"].data_param.source == os.path.join(dataset.folder, "train_db", "features")
    assert data["val_label"].data_param.source == os.path.join(dataset.folder, "val_db", "labels")
    assert all(os.path.isabs(l.data_param.source) for l in data.values())
    assert all(l.data_param.backend == 1 for l in data.values())  # LMDB
    assert all(l.data_param.batch_size == 4 for l in data.values())
    score = [l for l in train_val.layer if l.name == "score"][0]
    assert score.convolution_param.num_output == 2
    assert [l.name for l in deploy.layer] == ["data", "scale", "conv1", "relu1", "score"]
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 1, 8, 8]


def test_batch_size_from_prototxt_then_default(dataset):
    train_val, _ = derive.derive_networks(parse_net(TINY_NET), dataset, {})
    assert {l.data_param.batch_size for l in train_val.layer if l.type == "Data"} == {2}
    text = TINY_NET.replace("data_param { batch_size: 2 }", "")
    train_val, _ = derive.derive_networks(parse_net(text), dataset, {})
    assert {l.data_param.batch_size for l in train_val.layer if l.type == "Data"} == {16}


def test_crop_and_missing_mean(dataset):
    train_val, deploy = derive.derive_networks(parse_net(TINY_NET), dataset, {"crop_size": 6})
    assert [l for l in train_val.layer if l.name == "train_data"][0].transform_param.crop_size == 6
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 1, 6, 6]
    with pytest.raises(derive.DeriveError, match="larger than the images"):
        derive.derive_networks(parse_net(TINY_NET), dataset, {"crop_size": 9})
    with pytest.raises(derive.DeriveError, match="mean.binaryproto"):
        derive.derive_networks(parse_net(TINY_NET), dataset, {"mean": "image"})


def test_missing_bottom_names_layer_and_blob(dataset):
    text = TINY_NET.replace('bottom: "score" bottom: "label" top: "accuracy"',
                            'bottom: "score" bottom: "labelz" top: "accuracy"')
    with pytest.raises(derive.DeriveError, match=r"val network: layer 'accuracy' needs blob 'labelz'"):
        derive.derive_networks(parse_net(text), dataset, {})
    text = TINY_NET.replace('exclude { stage: "deploy" }', "")
    with pytest.raises(derive.DeriveError, match=r"deploy network: layer 'loss' needs blob 'label'"):
        derive.derive_networks(parse_net(text), dataset, {})


def test_standard_network_derives(dataset):
    from caffeseg.engine.prototxt import read_net
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train_val, deploy = derive.derive_networks(read_net(os.path.join(root, "prototxt", "lab_fc.prototxt")),
                                               dataset, {})
    assert deploy.layer[0].type == "Input"
    assert not any(l.type == "Data" for l in deploy.layer)


def test_pixel_and_image_mean(dataset):
    import numpy as np
    from caffeseg.engine.blobproto import write_binaryproto
    mean = np.zeros((1, 1, 8, 8), np.float32)
    mean[0, 0, :4] = 1000.5  # a 16-bit dataset: the per-channel mean stays fractional
    write_binaryproto(os.path.join(dataset.folder, "mean.binaryproto"), mean)
    train_val, _ = derive.derive_networks(parse_net(TINY_NET), dataset, {"mean": "pixel"})
    layers = {l.name: l for l in train_val.layer}
    assert list(layers["train_data"].transform_param.mean_value) == [pytest.approx(500.25)]
    assert len(layers["train_label"].transform_param.mean_value) == 0  # labels are never shifted
    train_val, _ = derive.derive_networks(parse_net(TINY_NET), dataset, {"mean": "image"})
    layers = {l.name: l for l in train_val.layer}
    assert layers["val_data"].transform_param.mean_file == os.path.join(dataset.folder, "mean.binaryproto")


# -- class count (set_num_output) on the networks of prototxt/ -------------------------------------

PROTOTXT_NETS = ["fcn_alexnet", "fcn_alexnet_lab", "fcn_alexnet_dice", "fcn_8s", "lab_fc", "lab_cnn", "unet", "deeplab_aspp"]
BIG_NETS = {"fcn_alexnet", "fcn_alexnet_lab", "fcn_alexnet_dice", "fcn_8s"}


def _prototxt(name):
    from caffeseg.engine.prototxt import read_net
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return read_net(os.path.join(root, "prototxt", name + ".prototxt"))


def _slim_hidden(net, factor):
    """Hidden widths divided by ``factor``; the class layers (score*/upscore*) untouched."""
    for layer in net.layer:
        if layer.name.startswith(("score", "upscore")):
            continue
        for p in (layer.convolution_param, layer.inner_product_param):
            if p.num_output:
                p.num_output = max(1, p.num_output // factor)
    return net


def test_class_count_sets_grouped_upscore_and_lab_fc_reshape():
    net = _prototxt("fcn_alexnet")
    derive.set_class_count(net, 5)
    layers = {l.name: l for l in net.layer}
    assert layers["score_fr"].convolution_param.num_output == 5
    up = layers["upscore"].convolution_param
    assert (up.num_output, up.group) == (5, 5)  # one bilinear filter per class
    assert layers["conv2"].convolution_param.group == 2  # trunk groups untouched
    assert layers["fc7"].convolution_param.num_output == 4096

    net = _prototxt("fcn_8s")
    derive.set_class_count(net, 3)
    for name in ("score_fr_seg", "score_pool4_seg", "score_pool3_seg"):
        assert {l.name: l for l in net.layer}[name].convolution_param.num_output == 3
    for name in ("upscore2_seg", "upscore_pool4_seg", "upscore8_seg"):
        cp = {l.name: l for l in net.layer}[name].convolution_param
        assert (cp.num_output, cp.group) == (3, 3)

    net = _prototxt("lab_fc")
    changed = derive.set_class_count(net, 3)
    layers = {l.name: l for l in net.layer}
    assert layers["score_flat"].inner_product_param.num_output == 3 * 256 * 256
    assert list(layers["score"].reshape_param.shape.dim) == [0, 3, 256, 256]
    assert layers["hidden"].inner_product_param.num_output == 64
    assert set(changed) == {"score_flat", "score"}


def test_class_count_keeps_an_ungrouped_deconvolution_ungrouped():
    net = parse_net(TINY_NET.replace(
        'layer { name: "loss"',
        'layer { name: "upscore" type: "Deconvolution" bottom: "score" top: "upscore" '
        'convolution_param { num_output: 7 kernel_size: 2 stride: 2 } }\nlayer { name: "loss"'))
    derive.set_class_count(net, 3)
    up = {l.name: l for l in net.layer}["upscore"].convolution_param
    assert (up.num_output, up.group) == (3, 1)


def test_class_count_refuses_a_reshape_without_spatial_dims():
    net = _prototxt("lab_fc")
    reshape = {l.name: l for l in net.layer}["score"]
    del reshape.reshape_param.shape.dim[:]
    reshape.reshape_param.shape.dim.extend([0, 2, -1])
    with pytest.raises(derive.DeriveError, match="cannot tell its class"):
        derive.set_class_count(net, 3)
    with pytest.raises(derive.DeriveError, match="no classes"):
        derive.set_class_count(_prototxt("unet"), 0)


def _with_inputs(net, shape):
    """The filtered net with its Data layers turned into Input layers (label: one channel)."""
    from caffeseg.engine.proto import caffe_pb2
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        layer.ClearField("include")  # already filtered
        layer.ClearField("exclude")
        if layer.type == "Data":
            top = layer.top[0]
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.input_param.shape.add().dim.extend(shape if top == "data" else [shape[0], 1] + shape[2:])
    return out


@pytest.mark.parametrize("name", PROTOTXT_NETS)
def test_three_class_nets_build_and_score_three_channels(name, tmp_path):
    """Every prototxt net, given 3 classes by set_class_count (through derive_networks'
    set_num_output), builds on the engine in train, val and deploy with a N x 3 x H x W score."""
    import numpy as np
    from caffeseg import engine
    from caffeseg.engine.prototxt import format_message
    h, w = (256, 256) if name == "lab_fc" else (67, 61)
    folder = make_dataset_dir(str(tmp_path / "ds"), shape=(1, h, w), classes=("background", "lv", "myo"))
    facts = derive.DatasetFacts.load(folder)
    net = _prototxt(name)
    if name in BIG_NETS:
        _slim_hidden(net, 16)
    train_val, deploy = derive.derive_networks(net, facts, {"set_num_output": True, "batch_size": 2})
    rng = np.random.RandomState(0)
    nets = [(derive.filter_net(train_val, *derive.TRAIN_STATE), engine.TRAIN, 2),
            (derive.filter_net(train_val, *derive.VAL_STATE), engine.TEST, 2),
            (deploy, engine.TEST, 1)]
    for index, (param, phase, batch) in enumerate(nets):
        path = tmp_path / ("net%d.prototxt" % index)
        path.write_text(format_message(_with_inputs(param, [batch, 1, h, w])))
        built = engine.Net(str(path), phase)
        built.blobs["data"].data[...] = rng.uniform(0, 255, built.blobs["data"].data.shape)
        if "label" in built.blobs:
            built.blobs["label"].data[...] = rng.randint(0, 3, built.blobs["label"].data.shape)
        out = built.forward()
        assert tuple(built.blobs["score"].data.shape) == (batch, 3, h, w), (index, name)
        if "loss" in out:
            assert np.isfinite(np.asarray(out["loss"])).all()
