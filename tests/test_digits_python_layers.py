"""python_layers/digits_python_layers.py (Dice, DiceLoss, SegmentationMetrics): hand-computed
values, empty cases, gradient check, and the same layers running inside an engine Net."""
import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine import caffe_shim

caffe_shim.install()  # the layer file says ``import caffe``: the engine, unless real pycaffe is loaded
from caffeseg.python_layers import digits_python_layers as dpl  # noqa: E402


class FakeBlob(object):
    """The part of the pycaffe Blob API the layers use."""

    def __init__(self, array=None):
        self.data = np.zeros(0, np.float32) if array is None else np.asarray(array, np.float32).copy()
        self.diff = np.zeros_like(self.data)

    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)
        self.diff = np.zeros(shape, np.float32)


def make_layer(cls, param_str=""):
    layer = cls.__new__(cls)
    layer.param_str = param_str
    layer.phase = 1
    return layer


def run(cls, score, label, param_str="", ntops=1):
    layer = make_layer(cls, param_str)
    bottom = [FakeBlob(score), FakeBlob(label)]
    top = [FakeBlob() for _ in range(ntops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def scores_for(prediction, num_classes=2):
    """Score maps whose argmax is `prediction` (N x H x W)."""
    prediction = np.asarray(prediction)
    score = np.zeros((prediction.shape[0], num_classes) + prediction.shape[1:], np.float32)
    for c in range(num_classes):
        score[:, c] = (prediction == c) * 3.0 + c * 0.01
    return score


# ---------------------------------------------------------------- Dice

def test_dice_hand_computed_two_images():
    pred = np.array([[[1, 1, 0], [0, 0, 0]],      # |P| = 2
                     [[0, 0, 0], [1, 1, 1]]])     # |P| = 3
    label = np.array([[[1, 0, 0], [0, 0, 1]],     # |L| = 2, |P∩L| = 1 → 2·1/4 = 0.5
                      [[0, 0, 0], [0, 1, 1]]])    # |L| = 2, |P∩L| = 2 → 4/5 = 0.8
    _, _, top = run(dpl.Dice, scores_for(pred), label[:, None])
    assert top[0].data.shape == (1,)
    assert top[0].data[0] == pytest.approx((0.5 + 0.8) / 2, abs=1e-6)


def test_dice_empty_label_and_prediction_is_one():
    pred = np.zeros((1, 4, 4), int)
    _, _, top = run(dpl.Dice, scores_for(pred), np.zeros((1, 1, 4, 4)))
    assert top[0].data[0] == 1.0


def test_dice_prediction_without_label_is_zero():
    pred = np.zeros((1, 3, 3), int)
    pred[0, 1, 1] = 1
    _, _, top = run(dpl.Dice, scores_for(pred), np.zeros((1, 1, 3, 3)))
    assert top[0].data[0] == 0.0


def test_dice_ignores_void_pixels_and_selects_class():
    pred = np.array([[[2, 2], [0, 1]]])
    label = np.array([[[2, 255], [2, 1]]])
    # class 2: P = {(0,0)} (the (0,1) pixel is void), L = {(0,0),(1,0)} → 2·1/3
    _, _, top = run(dpl.Dice, scores_for(pred, 3), label[:, None], "{'class': 2}")
    assert top[0].data[0] == pytest.approx(2.0 / 3.0, abs=1e-6)


def test_dice_backward_is_silent():
    layer, bottom, top = run(dpl.Dice, scores_for(np.zeros((1, 2, 2), int)), np.zeros((1, 1, 2, 2)))
    layer.backward(top, [True, False], bottom)
    assert not bottom[0].diff.any()


def test_dice_bad_shapes_and_params_are_named():
    with pytest.raises(ValueError, match="label shape"):
        run(dpl.Dice, np.zeros((1, 2, 4, 4)), np.zeros((1, 1, 4, 5)))
    with pytest.raises(ValueError, match="unknown param_str key 'clas'"):
        run(dpl.Dice, np.zeros((1, 2, 4, 4)), np.zeros((1, 1, 4, 4)), "clas=1")
    with pytest.raises(ValueError, match="out of range"):
        run(dpl.Dice, np.zeros((1, 2, 4, 4)), np.zeros((1, 1, 4, 4)), "class=5")


# ---------------------------------------------------------------- DiceLoss

def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_dice_loss_value_hand_computed():
    rng = np.random.RandomState(0)
    score = rng.randn(2, 2, 3, 3)
    label = rng.randint(0, 2, size=(2, 1, 3, 3)).astype(float)
    _, _, top = run(dpl.DiceLoss, score, label, "smooth=0.5")
    p = _softmax(score)[:, 1]
    g = (label[:, 0] == 1)
    dice = [(2 * (p[n] * g[n]).sum() + 0.5) / (p[n].sum() + g[n].sum() + 0.5) for n in range(2)]
    assert top[0].data[0] == pytest.approx(1 - np.mean(dice), rel=1e-5)


@pytest.mark.parametrize("param_str", ["", "{'class': 'all', 'smooth': 0.1}", "class=2 smooth=1"])
def test_dice_loss_gradient_matches_finite_differences(param_str):
    rng = np.random.RandomState(1)
    score = rng.randn(2, 3, 4, 3)
    label = rng.randint(0, 3, size=(2, 1, 4, 3)).astype(float)
    label[0, 0, 0, 0] = 255  # a void pixel must get no gradient
    loss_weight = 2.0

    layer, bottom, top = run(dpl.DiceLoss, score, label, param_str)
    top[0].diff[...] = loss_weight
    layer.backward(top, [True, False], bottom)
    analytic = bottom[0].diff.astype(np.float64)

    def loss_at(s):
        return float(run(dpl.DiceLoss, s, label, param_str)[2][0].data[0]) * loss_weight

    eps = 1e-2  # float32 blobs: a larger step keeps round-off below the tolerance
    numeric = np.zeros_like(score)
    for index in np.ndindex(score.shape):
        up, down = score.copy(), score.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (loss_at(up) - loss_at(down)) / (2 * eps)
    assert np.abs(analytic).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(analytic, numeric, atol=2e-4, rtol=2e-2)
    assert not analytic[0, :, 0, 0].any()


def test_dice_loss_perfect_prediction_is_near_zero():
    label = np.array([[[[0, 1], [1, 0]]]], float)
    score = np.stack([(label[:, 0] == 0) * 40.0, (label[:, 0] == 1) * 40.0], axis=1)
    _, _, top = run(dpl.DiceLoss, score, label, "smooth=0")
    assert top[0].data[0] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- SegmentationMetrics

def test_segmentation_metrics_hand_computed():
    # 3 classes, 8 valid pixels (+1 void). Confusion (rows GT, cols prediction):
    # GT0: pred 0,0,1     GT1: pred 1,1,2     GT2: pred 2,0     → hist = [[2,1,0],[0,2,1],[1,0,1]]
    gt = np.array([0, 0, 0, 1, 1, 1, 2, 2, 255])
    pr = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2])
    label = gt.reshape(1, 1, 3, 3)
    score = scores_for(pr.reshape(1, 3, 3), 3)
    _, _, top = run(dpl.SegmentationMetrics, score, label, ntops=6)
    iou = [2 / (3 + 3 - 2), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]
    dice = [4 / 6, 4 / 6, 2 / 4]
    assert top[0].data[0] == pytest.approx(5 / 8, rel=1e-6)
    assert top[1].data[0] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3, rel=1e-6)
    assert top[2].data[0] == pytest.approx(np.mean(iou), rel=1e-6)
    assert top[3].data[0] == pytest.approx(3 / 8 * iou[0] + 3 / 8 * iou[1] + 2 / 8 * iou[2], rel=1e-6)
    np.testing.assert_allclose(top[4].data, iou, rtol=1e-6)
    np.testing.assert_allclose(top[5].data, dice, rtol=1e-6)


def test_segmentation_metrics_absent_class_and_empty_batch():
    label = np.zeros((1, 1, 2, 2))
    score = scores_for(np.zeros((1, 2, 2), int), 3)
    _, _, top = run(dpl.SegmentationMetrics, score, label, ntops=6)
    np.testing.assert_array_equal(top[4].data, [1, 1, 1])  # classes 1, 2 absent → 1.0 by definition
    assert top[2].data[0] == 1.0  # mean over present classes only (class 0: perfect)
    _, _, top = run(dpl.SegmentationMetrics, score, np.full((1, 1, 2, 2), 255.0), ntops=4)
    assert [t.data[0] for t in top] == [1.0, 1.0, 1.0, 1.0]


def test_segmentation_metrics_top_count_checked():
    with pytest.raises(ValueError, match="1 to 6 tops"):
        run(dpl.SegmentationMetrics, np.zeros((1, 2, 2, 2)), np.zeros((1, 1, 2, 2)), ntops=7)


# ---------------------------------------------------------------- inside an engine Net

NET_WITH_METRICS = """
name: "metrics"
force_backward: true
layer { name: "score" type: "Input" top: "score" input_param { shape { dim: 2 dim: 2 dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 1 dim: 4 dim: 3 } } }
layer { name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice"
        python_param { module: "digits_python_layers" layer: "Dice" } }
layer { name: "diceloss" type: "Python" bottom: "score" bottom: "label" top: "diceloss" loss_weight: 1
        python_param { module: "digits_python_layers" layer: "DiceLoss" param_str: "smooth=1" } }
"""


def test_layers_inside_engine_net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET_WITH_METRICS)
    net = engine.Net(str(path), engine.TEST)
    rng = np.random.RandomState(3)
    score = rng.randn(2, 2, 4, 3).astype(np.float32)
    label = rng.randint(0, 2, size=(2, 1, 4, 3)).astype(np.float32)
    net.blobs["score"].data[...] = score
    net.blobs["label"].data[...] = label
    out = net.forward()
    _, _, ref_dice = run(dpl.Dice, score, label)
    layer, bottom, ref_loss = run(dpl.DiceLoss, score, label, "smooth=1")
    assert float(np.asarray(out["dice"]).ravel()[0]) == pytest.approx(ref_dice[0].data[0], abs=1e-6)
    assert float(np.asarray(out["diceloss"]).ravel()[0]) == pytest.approx(ref_loss[0].data[0], abs=1e-6)
    net.backward()
    ref_loss[0].diff[...] = 1.0
    layer.backward(ref_loss, [True, False], bottom)
    np.testing.assert_allclose(net.blobs["score"].diff, bottom[0].diff, atol=1e-6)


def test_dice_matches_a_plain_argmax_reference_with_void_pixels():
    rng = np.random.RandomState(3)
    scores = rng.randn(4, 3, 13, 11).astype(np.float32)
    labels = rng.randint(0, 3, size=(4, 1, 13, 11)).astype(np.float32)
    labels[rng.rand(*labels.shape) < 0.2] = 255
    labels[2] = 0  # an image without class 2 in the label
    for target in (1, 2):
        _, _, top = run(dpl.Dice, scores, labels, param_str="{'class': %d}" % target)
        prediction = np.argmax(scores, axis=1)
        label = labels[:, 0]
        expected = []
        for n in range(4):
            keep = label[n] != 255
            p = (prediction[n] == target) & keep
            g = (label[n] == target) & keep
            total = p.sum() + g.sum()
            expected.append(1.0 if total == 0 else 2.0 * (p & g).sum() / total)
        np.testing.assert_allclose(top[0].data, np.mean(expected), rtol=1e-6)


def test_dice_ignore_label_beyond_float_precision_ignores_nothing():
    # 2**24 + 1 has no float32; a label of 2**24 must not be taken for it (the old int64 rule)
    scores = scores_for(np.ones((1, 1, 2), np.int64))
    labels = np.array([[[[2 ** 24, 1]]]], np.float32)
    _, _, top = run(dpl.Dice, scores, labels, param_str="{'ignore_label': %d}" % (2 ** 24 + 1))
    np.testing.assert_allclose(top[0].data, 2.0 * 1 / (2 + 1), rtol=1e-6)
