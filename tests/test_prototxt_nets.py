"""The networks in prototxt/: stage filtering, output size = input size (Caffe's shape rules,
checked here by a small independent calculator), OpenCV's Caffe importer on random weights, and the
engine Net in TRAIN / val / deploy (whose outputs must equal OpenCV's)."""
import glob
import math
import os

import cv2
import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array
from caffeseg.engine.caffemodel import write_caffemodel
from caffeseg.engine.prototxt import format_message, read_net
from caffeseg.engine.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOTXT_DIR = os.path.join(ROOT, "prototxt")
NETS = ["fcn_alexnet", "fcn_alexnet_lab", "fcn_alexnet_dice", "fcn_8s", "lab_fc", "lab_cnn", "unet", "deeplab_aspp"]
ANY_SIZE_NETS = [n for n in NETS if n != "lab_fc"]  # lab_fc's InnerProduct fixes 256x256
BIG_NETS = {"fcn_alexnet", "fcn_alexnet_lab", "fcn_alexnet_dice", "fcn_8s"}


def net_path(name):
    return os.path.join(PROTOTXT_DIR, name + ".prototxt")


# ---------------------------------------------------------------- DIGITS derivation (test copy)

def _rule_matches(rule, phase, stages):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def derive(name, which, input_shape):
    """train / val / deploy net of a DIGITS-style file; Data layers become Input layers of
    `input_shape` (label: one channel), deploy gets an Input "data" like DIGITS' deploy net."""
    phase, stages = {"train": (caffe_pb2.TRAIN, ["train"]), "val": (caffe_pb2.TEST, ["val"]),
                     "deploy": (caffe_pb2.TEST, ["deploy"])}[which]
    source = read_net(net_path(name))
    net = caffe_pb2.NetParameter()
    net.name = source.name
    if which == "deploy":
        data = net.layer.add(name="data", type="Input", top=["data"])
        data.input_param.shape.add().dim.extend(input_shape)
    for layer in source.layer:
        if layer.include:
            keep = any(_rule_matches(r, phase, stages) for r in layer.include)
        else:
            keep = not any(_rule_matches(r, phase, stages) for r in layer.exclude)
        if not keep:
            continue
        copy = net.layer.add()
        copy.CopyFrom(layer)
        del copy.include[:]
        del copy.exclude[:]
        if copy.type == "Data":
            copy.type = "Input"
            copy.ClearField("data_param")
            shape = list(input_shape) if copy.top[0] == "data" else [input_shape[0], 1] + list(input_shape[2:])
            copy.input_param.shape.add().dim.extend(shape)
    return net


# ---------------------------------------------------------------- independent shape calculator

def _conv_geometry(cp):
    k = cp.kernel_size[0] if cp.kernel_size else cp.kernel_h
    s = cp.stride[0] if cp.stride else 1
    p = cp.pad[0] if cp.pad else 0
    d = cp.dilation[0] if cp.dilation else 1
    return k, s, p, d


def infer_shapes(net):
    """Blob shapes and parameter shapes by Caffe's formulas (only the layer types used here)."""
    blobs, params = {}, {}
    for layer in net.layer:
        bottoms = [blobs[b] for b in layer.bottom]
        t = layer.type
        if t == "Input":
            out = tuple(layer.input_param.shape[0].dim)
        elif t in ("Convolution", "Deconvolution"):
            cp = layer.convolution_param
            k, s, p, d = _conv_geometry(cp)
            n, c, h, w = bottoms[0]
            ke = d * (k - 1) + 1
            if t == "Convolution":
                size = [(x + 2 * p - ke) // s + 1 for x in (h, w)]
                params[layer.name] = [(cp.num_output, c // cp.group, k, k)]
            else:
                size = [s * (x - 1) + ke - 2 * p for x in (h, w)]
                params[layer.name] = [(c, cp.num_output // cp.group, k, k)]
            if cp.bias_term:
                params[layer.name].append((cp.num_output,))
            out = (n, cp.num_output, size[0], size[1])
        elif t == "Pooling":
            pp = layer.pooling_param
            n, c, h, w = bottoms[0]
            if pp.global_pooling:
                out = (n, c, 1, 1)
            else:
                k, s, p = pp.kernel_size, pp.stride, pp.pad
                size = []
                for x in (h, w):
                    o = int(math.ceil(float(x + 2 * p - k) / s)) + 1
                    if p and (o - 1) * s >= x + p:
                        o -= 1
                    size.append(o)
                out = (n, c, size[0], size[1])
        elif t == "Crop":
            offset = layer.crop_param.offset[0]
            ref = bottoms[1]
            for axis in (2, 3):
                assert bottoms[0][axis] >= ref[axis] + offset, \
                    "%s: %s too small to crop at offset %d" % (layer.name, bottoms[0], offset)
            out = bottoms[0][:2] + ref[2:]
        elif t == "Concat":
            assert all(b[2:] == bottoms[0][2:] and b[0] == bottoms[0][0] for b in bottoms), layer.name
            out = (bottoms[0][0], sum(b[1] for b in bottoms)) + bottoms[0][2:]
        elif t == "Eltwise":
            assert all(b == bottoms[0] for b in bottoms), (layer.name, bottoms)
            out = bottoms[0]
        elif t == "Flatten":
            out = (bottoms[0][0], int(np.prod(bottoms[0][1:])))
        elif t == "InnerProduct":
            k = int(np.prod(bottoms[0][1:]))
            params[layer.name] = [(layer.inner_product_param.num_output, k), (layer.inner_product_param.num_output,)]
            out = (bottoms[0][0], layer.inner_product_param.num_output)
        elif t == "Reshape":
            dims = list(layer.reshape_param.shape.dim)
            out = tuple(bottoms[0][i] if d == 0 else d for i, d in enumerate(dims))
            assert np.prod(out) == np.prod(bottoms[0]), layer.name
        elif t in ("Bias", "Scale") and len(bottoms) == 2:
            axis = (layer.bias_param if t == "Bias" else layer.scale_param).axis
            assert bottoms[1] == bottoms[0][axis:axis + len(bottoms[1])], (layer.name, bottoms)
            out = bottoms[0]
        elif t in ("SoftmaxWithLoss", "Accuracy", "Python"):
            assert bottoms[0][0] == bottoms[1][0] and bottoms[0][2:] == bottoms[1][2:], (layer.name, bottoms)
            out = (1,)
        else:  # pointwise: ReLU, Dropout, Power, LRN
            out = bottoms[0]
        for top in layer.top:
            blobs[top] = out
    return blobs, params


# ---------------------------------------------------------------- structure

def crop_alignment(net):
    """For each Crop: (offset in the prototxt, offset that aligns it), by composing coordinate maps
    y_blob = a * y_data + b from the input through every layer, as ``caffe.coord_map.crop`` does
    (Convolution/Pooling a = 1/s, b = (p - (k_ext - 1)/2)/s; Deconvolution a = s, b = (k_ext - 1)/2 - p;
    Crop (1, -offset); pointwise layers (1, 0))."""
    maps, result = {}, {}
    for layer in net.layer:
        t = layer.type
        bottoms = [maps[b] for b in layer.bottom if b in maps]
        if t == "Input":
            out = (1.0, 0.0)
        elif t in ("Convolution", "Deconvolution", "Pooling"):
            if t == "Pooling":
                pp = layer.pooling_param
                if pp.global_pooling:
                    out = None  # carries no spatial position
                    for top in layer.top:
                        maps[top] = out
                    continue
                k, s, p, d = pp.kernel_size, pp.stride, pp.pad, 1
            else:
                k, s, p, d = _conv_geometry(layer.convolution_param)
            if maps[layer.bottom[0]] is None:  # 1x1 conv on the global pool
                for top in layer.top:
                    maps[top] = None
                continue
            a, b = maps[layer.bottom[0]]
            half = (d * (k - 1)) / 2.0
            out = (a / s, (b + p - half) / s) if t != "Deconvolution" else (a * s, s * b + half - p)
        elif t == "Crop":
            (a, b), (a_ref, b_ref) = maps[layer.bottom[0]], maps[layer.bottom[1]]
            assert a == a_ref, layer.name
            result[layer.name] = (layer.crop_param.offset[0], b - b_ref)
            out = (a_ref, b_ref)
        elif t in ("Concat", "Eltwise", "Scale", "Bias"):
            spatial = [m for m in bottoms if m is not None]
            assert all(m == spatial[0] for m in spatial), (layer.name, spatial)
            out = spatial[0]
        else:
            out = bottoms[0] if bottoms else None
        for top in layer.top:
            maps[top] = out
    return result


@pytest.mark.parametrize("name", ANY_SIZE_NETS)
def test_crop_offsets_align_with_the_input(name):
    alignment = crop_alignment(derive(name, "deploy", [1, 1, 256, 256]))
    assert "score" in alignment or name == "unet"
    for crop_name, (written, aligned) in alignment.items():
        assert written == aligned, "%s: offset %s, alignment needs %s" % (crop_name, written, aligned)


def test_crop_alignment_reproduces_the_fcn_offsets():
    # the offsets of fcn.berkeleyvision.org's prototxts come out of the same computation
    assert crop_alignment(derive("fcn_8s", "deploy", [1, 3, 8, 8])) == {
        "score_pool4c": (5, 5.0), "score_pool3c": (9, 9.0), "score": (31, 31.0)}
    assert crop_alignment(derive("fcn_alexnet", "deploy", [1, 3, 8, 8])) == {"score": (18, 18.0)}



@pytest.mark.parametrize("name", NETS)
def test_stage_filtering_follows_digits(name):
    def layer_names(which):
        return [l.name for l in derive(name, which, [1, 1, 256, 256]).layer]

    train, val, deploy = layer_names("train"), layer_names("val"), layer_names("deploy")
    assert "train_data" in train and "val_data" not in train
    assert "val_data" in val and "train_data" not in val
    assert "loss" in train and "loss" in val and "loss" not in deploy
    assert "accuracy" in val and "accuracy" not in train and "accuracy" not in deploy
    assert all(l.type != "Data" for l in read_net(net_path(name)).layer if not l.include)
    has_dice = name not in ("fcn_alexnet", "fcn_alexnet_lab")
    # the lab's Dice block: `exclude { stage: "deploy" }`, so a train and a val curve
    assert ("dice" in val) == has_dice and ("dice" in train) == has_dice and "dice" not in deploy


def test_fcn_alexnet_has_the_lab_dice_block_commented_out():
    text = open(net_path("fcn_alexnet")).read()
    dice_text = open(net_path("fcn_alexnet_dice")).read()
    assert '#   python_param { module: "digits_python_layers" layer: "Dice" }' in text
    assert 'python_param { module: "digits_python_layers" layer: "Dice" }' in dice_text
    plain = [l for l in read_net(net_path("fcn_alexnet")).layer]
    with_dice = [l for l in read_net(net_path("fcn_alexnet_dice")).layer]
    assert with_dice[:-1] == plain  # the same net plus the Dice layer at the place of the block


def test_fcn_alexnet_matches_the_lab_topology():
    layers = {l.name: l for l in read_net(net_path("fcn_alexnet")).layer}
    assert layers["shift"].power_param.shift == -116
    assert layers["conv1"].convolution_param.pad[0] == 100
    assert [layers[n].convolution_param.group for n in ("conv2", "conv4", "conv5")] == [2, 2, 2]
    up = layers["upscore"]
    assert (up.convolution_param.kernel_size[0], up.convolution_param.stride[0], up.convolution_param.group) == (63, 32, 2)
    assert up.convolution_param.weight_filler.type == "bilinear" and up.param[0].lr_mult == 0
    assert (layers["score"].crop_param.axis, layers["score"].crop_param.offset[0]) == (2, 18)


LEARNED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "score_fr")


def test_the_lab_fcn_alexnet_is_fcn_alexnet_with_the_labs_zero_fillers():
    lab = read_net(net_path("fcn_alexnet_lab")).layer
    improved = read_net(net_path("fcn_alexnet")).layer
    assert [l.name for l in lab] == [l.name for l in improved]
    for mine, theirs in zip(lab, improved):
        if mine.name in LEARNED:
            # the lab's file sets no filler: Caffe's default is constant 0 for weights and biases
            assert not mine.convolution_param.HasField("weight_filler")
            assert not mine.convolution_param.HasField("bias_filler")
            assert theirs.convolution_param.weight_filler.type == "xavier"
            theirs.convolution_param.ClearField("weight_filler")
            theirs.convolution_param.ClearField("bias_filler")
        assert mine == theirs, mine.name
    assert {l.name: l.convolution_param.weight_filler.type for l in lab}["upscore"] == "bilinear"


def test_the_lab_fcn_alexnet_starts_at_zero_in_the_engine(tmp_path):
    from caffeseg import engine
    deploy = derive("fcn_alexnet_lab", "deploy", [1, 1, 64, 64])
    path = tmp_path / "deploy.prototxt"
    path.write_text(format_message(deploy))
    net = engine.Net(str(path), engine.TEST)
    for name in LEARNED:
        assert all(not np.any(blob.data) for blob in net.params[name]), name
    assert np.any(net.params["upscore"][0].data)


FCN8S_TRUNK = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
               "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7"]


def test_fcn_8s_trunk_names_and_shapes_match_the_pascal_model():
    blobs, params = infer_shapes(derive("fcn_8s", "deploy", [1, 3, 500, 500]))
    expected = {"conv1_1": (64, 3, 3, 3), "conv2_1": (128, 64, 3, 3), "conv3_1": (256, 128, 3, 3),
                "conv4_1": (512, 256, 3, 3), "conv5_3": (512, 512, 3, 3), "fc6": (4096, 512, 7, 7),
                "fc7": (4096, 4096, 1, 1)}
    assert set(FCN8S_TRUNK) <= set(params)
    for name, shape in expected.items():
        assert params[name][0] == shape
    # FCN-8s shapes for a 500x500 input, worked by hand with Caffe's size rules
    assert blobs["upscore2_seg"][2:] == (34, 34) and blobs["upscore_pool4_seg"][2:] == (70, 70)
    assert blobs["upscore8_seg"][2:] == (568, 568) and blobs["score"] == (1, 2, 500, 500)


def test_fcn_alexnet_worked_shapes():
    blobs, params = infer_shapes(derive("fcn_alexnet", "deploy", [1, 3, 375, 500]))
    assert blobs["fc6"] == (1, 4096, 12, 16) and blobs["upscore"] == (1, 2, 415, 543)
    assert params["fc6"][0] == (4096, 256, 6, 6) and params["conv2"][0] == (256, 48, 5, 5)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("size", [(256, 256), (250, 250), (257, 263)])
def test_output_size_equals_input_size(name, size):
    if name == "lab_fc" and size != (256, 256):
        pytest.skip("lab_fc is fixed to 256x256 by its InnerProduct layers")
    for which in ("train", "val", "deploy"):
        blobs, _ = infer_shapes(derive(name, which, [2, 1, size[0], size[1]]))
        assert blobs["score"] == (2, 2) + size, (which, blobs["score"])


# ---------------------------------------------------------------- OpenCV's Caffe importer

def slim(net, factor):
    """Same topology with hidden widths divided by `factor` (class layers keep 2 outputs)."""
    for layer in net.layer:
        for p in (layer.convolution_param, layer.inner_product_param):
            if p.num_output > 2 and p.num_output != 131072:
                p.num_output //= factor
    return net


def random_weights(net, path, seed=0):
    _, params = infer_shapes(net)
    rng = np.random.RandomState(seed)
    model = caffe_pb2.NetParameter()
    for layer in net.layer:
        if layer.name not in params:
            continue
        entry = model.layer.add(name=layer.name, type=layer.type)
        for shape in params[layer.name]:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            values = rng.randn(*shape).astype(np.float32) * np.float32(1.0 / np.sqrt(fan_in))
            entry.blobs.append(array_to_blobproto(values))
    write_caffemodel(str(path), model)


CV_SIZE = {"lab_fc": (256, 256)}


def deploy_with_random_weights(name, tmp_path):
    """The deploy net at its OpenCV test size (slimmed to 16 channels if big), written to
    tmp_path with random weights: ((h, w), prototxt path, caffemodel path)."""
    h, w = CV_SIZE.get(name, (67, 61))
    net = derive(name, "deploy", [1, 1, h, w])
    if name in BIG_NETS:
        slim(net, 16)
    prototxt, weights = tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel"
    prototxt.write_text(format_message(net))
    random_weights(net, weights)
    return (h, w), str(prototxt), str(weights)


@pytest.mark.parametrize("name", [n for n in NETS if n != "fcn_alexnet_dice"])
def test_opencv_deploy_output_shape(name, tmp_path):
    (h, w), prototxt, weights = deploy_with_random_weights(name, tmp_path)
    cv_net = cv2.dnn.readNetFromCaffe(prototxt, weights)
    image = np.random.RandomState(1).uniform(0, 255, (1, 1, h, w)).astype(np.float32)
    cv_net.setInput(image)
    out = cv_net.forward("score")
    assert out.shape == (1, 2, h, w)
    assert np.isfinite(out).all() and out.std() > 0


# ---------------------------------------------------------------- engine Net

@pytest.mark.parametrize("name", NETS)
def test_engine_builds_train_val_deploy(name, tmp_path):
    size = (256, 256) if name in ("lab_fc",) else (67, 61)
    for which, phase in (("train", engine.TRAIN), ("val", engine.TEST), ("deploy", engine.TEST)):
        net_param = derive(name, which, [1, 1, size[0], size[1]])
        if name in BIG_NETS:
            slim(net_param, 16)
        path = tmp_path / (which + ".prototxt")
        path.write_text(format_message(net_param))
        net = engine.Net(str(path), phase)
        net.forward()
        assert tuple(net.blobs["score"].data.shape) == (1, 2) + size


@pytest.mark.parametrize("name", ["lab_cnn", "unet", "deeplab_aspp"])
@pytest.mark.parametrize("size", [(256, 256), (257, 263)])
def test_engine_deploy_full_size(name, size, tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(format_message(derive(name, "deploy", [1, 1, size[0], size[1]])))
    net = engine.Net(str(path), engine.TEST)
    out = net.forward()["score"]
    assert tuple(out.shape) == (1, 2) + size


@pytest.mark.parametrize("name", [n for n in NETS if n != "fcn_alexnet_dice"])
def test_engine_deploy_matches_opencv(name, tmp_path):
    (h, w), prototxt, weights = deploy_with_random_weights(name, tmp_path)
    image = np.random.RandomState(2).uniform(0, 255, (1, 1, h, w)).astype(np.float32)
    cv_net = cv2.dnn.readNetFromCaffe(prototxt, weights)
    cv_net.setInput(image)
    expected = cv_net.forward("score")
    net = engine.Net(prototxt, engine.TEST, weights=weights)
    net.blobs["data"].data[...] = image
    got = net.forward()["score"]
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-3)


@pytest.mark.parametrize("name", ANY_SIZE_NETS)
def test_any_input_size_from_one_pixel(name):
    for h in list(range(1, 40)) + [99, 130, 299]:
        blobs, _ = infer_shapes(derive(name, "deploy", [1, 1, h, h + 3]))
        assert blobs["score"] == (1, 2, h, h + 3), h


def test_every_prototxt_is_covered():
    found = sorted(os.path.basename(p)[:-len(".prototxt")] for p in glob.glob(os.path.join(PROTOTXT_DIR, "*.prototxt")))
    assert found == sorted(NETS)


def _readme_counts():
    """{file stem: (count for 1 channel, count for 3 channels)} from the README table."""
    counts = {}
    for line in open(os.path.join(PROTOTXT_DIR, "README.md")):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[2].startswith("`") and cells[2].endswith(".prototxt`"):
            one, three = cells[5].split("/")
            counts[cells[2].strip("`")[:-len(".prototxt")]] = (int(one.replace(",", "")), int(three.replace(",", "")))
    return counts


def test_readme_parameter_counts():
    counts = _readme_counts()
    assert sorted(counts) == sorted(NETS)
    for name, expected in counts.items():
        got = []
        for channels in (1, 3):
            _, params = infer_shapes(derive(name, "deploy", [1, channels, 256, 256]))
            got.append(sum(int(np.prod(shape)) for shapes in params.values() for shape in shapes))
        assert tuple(got) == expected, name


@pytest.mark.parametrize("name", NETS)
def test_engine_parameter_counts_match_readme(name, tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(format_message(derive(name, "deploy", [1, 1, 256, 256])))
    net = engine.Net(str(path), engine.TEST)
    total = sum(blob.data.size for blobs in net.params.values() for blob in blobs)
    assert total == _readme_counts()[name][0]


# ---------------------------------------------------------------- against BVLC Caffe's own run

GOLDEN_ALEXNET_WIDTHS = {"conv1": 16, "conv2": 32, "conv3": 48, "conv4": 48, "conv5": 32, "fc6": 64, "fc7": 64}


@pytest.mark.parametrize("case", ["fcn_alexnet_slim_gray", "fcn_alexnet_slim_rgb"])
def test_fcn_alexnet_reproduces_the_golden_caffe_scores(case, tmp_path):
    """Our FCN-AlexNet at the golden widths, with the golden weights, gives BVLC Caffe's `score`
    (run through OpenCV's importer; our net shifts by -116, so it is fed the input + 116)."""
    golden_dir = os.path.join(ROOT, "tests", "golden", "nets", case)
    golden = np.load(os.path.join(golden_dir, "io.npz"))
    image = golden["input:data"]
    net_param = derive("fcn_alexnet", "deploy", list(image.shape))
    for layer in net_param.layer:
        if layer.name in GOLDEN_ALEXNET_WIDTHS:
            layer.convolution_param.num_output = GOLDEN_ALEXNET_WIDTHS[layer.name]
    (tmp_path / "deploy.prototxt").write_text(format_message(net_param))
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"),
                                      os.path.join(golden_dir, "weights.caffemodel"))
    cv_net.setInput((image + 116.0).astype(np.float32))
    got = cv_net.forward("score")
    expected = golden["blob:score"]
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max(), rtol=1e-3)


@pytest.mark.parametrize("name", NETS)
def test_jobs_derivation_gives_working_deploy_nets(name, tmp_path):
    """The job runner's own DIGITS derivation (jobs.derive) accepts every file; its deploy net runs."""
    from caffeseg.jobs.derive import DatasetFacts, derive_networks
    from tests.jobs_fixtures import make_dataset_dir
    size = (256, 256) if name == "lab_fc" else (67, 61)
    facts = DatasetFacts.load(make_dataset_dir(str(tmp_path), shape=(1,) + size))
    net_param = read_net(net_path(name))
    if name in BIG_NETS:
        slim(net_param, 16)
    train_val, deploy = derive_networks(net_param, facts)
    assert [l.data_param.source for l in train_val.layer if l.type == "Data"] == [
        str(tmp_path / "train_db" / "features"), str(tmp_path / "train_db" / "labels"),
        str(tmp_path / "val_db" / "features"), str(tmp_path / "val_db" / "labels")]
    (tmp_path / "deploy.prototxt").write_text(format_message(deploy))
    net = engine.Net(str(tmp_path / "deploy.prototxt"), engine.TEST)
    assert net.forward()["score"].shape == (1, 2) + size


@pytest.mark.parametrize("name", ["fcn_alexnet", "fcn_8s"])
def test_engine_full_width_fcn_forward_at_256(name, tmp_path):
    """Once per net at full width (the sizes pretrained files need): builds, runs, keeps the size."""
    path = tmp_path / "deploy.prototxt"
    path.write_text(format_message(derive(name, "deploy", [1, 3, 256, 256])))
    net = engine.Net(str(path), engine.TEST)
    assert net.params["fc6"][0].data.shape == {"fcn_alexnet": (4096, 256, 6, 6), "fcn_8s": (4096, 512, 7, 7)}[name]
    assert net.forward()["score"].shape == (1, 2, 256, 256)


def test_pascal_fcn8s_style_weights_load_into_fcn_8s(tmp_path):
    """A file laid out like fcn8s-heavy-pascal.caffemodel (trunk + 21-class score/upscore layers)
    fills our trunk by name; its 21-class layers are ignored as Caffe ignores unknown layers."""
    net_param = slim(derive("fcn_8s", "deploy", [1, 3, 40, 40]), 16)
    (tmp_path / "deploy.prototxt").write_text(format_message(net_param))
    _, shapes = infer_shapes(net_param)
    rng = np.random.RandomState(7)
    model = caffe_pb2.NetParameter()
    for name in FCN8S_TRUNK:
        layer = model.layer.add(name=name, type="Convolution")
        layer.blobs.extend([array_to_blobproto(rng.randn(*s).astype(np.float32)) for s in shapes[name]])
    fc7_width = shapes["fc7"][0][0]
    for name, shape in (("score_fr", (21, fc7_width, 1, 1)), ("upscore2", (21, 21, 4, 4)),
                        ("score_pool4", (21, shapes["conv4_3"][0][0], 1, 1)), ("upscore8", (21, 21, 16, 16))):
        layer = model.layer.add(name=name, type="Convolution")
        layer.blobs.append(array_to_blobproto(np.ones(shape, np.float32)))
    write_caffemodel(str(tmp_path / "pascal_like.caffemodel"), model)

    net = engine.Net(str(tmp_path / "deploy.prototxt"), engine.TEST, weights=str(tmp_path / "pascal_like.caffemodel"))
    loaded = {l.name: blobproto_to_array(l.blobs[0]) for l in model.layer}
    for name in FCN8S_TRUNK:
        np.testing.assert_array_equal(net.params[name][0].data, loaded[name])
    assert net.params["score_fr_seg"][0].data.shape == (2, fc7_width, 1, 1)
    assert net.forward()["score"].shape == (1, 2, 40, 40)
