"""A second, independent reference: OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``).

The golden FCN nets in deploy form (label input and loss dropped) get fresh random weights;
our ``Net`` saves them as a .caffemodel, OpenCV loads prototxt + weights itself, and both
forward passes must agree on every blob OpenCV exposes by name. OpenCV implements every layer
type these nets use (Convolution, ReLU, Pooling, LRN, Dropout, Deconvolution, Crop, Eltwise,
Split); a net with a layer type OpenCV lacks is skipped with that type named.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from caffeseg import engine
from conftest import golden_case_names, load_golden
from caffeseg.engine.prototxt import format_message, read_net

if not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 dropped it; the project "
                "pins opencv-python-headless < 5)", allow_module_level=True)

OPENCV_TYPES = {"Input", "Convolution", "ReLU", "Pooling", "LRN", "Dropout", "Deconvolution", "Crop",
                "Eltwise", "Split", "Softmax", "InnerProduct", "Concat", "BatchNorm", "Scale", "Power",
                "Sigmoid", "TanH", "Flatten", "Reshape"}


def deploy_form(case) -> tuple[str, list[str]]:
    """The net without the label Input and anything that reads it (loss, accuracy)."""
    param = read_net(case.prototxt)
    keep = [layer for layer in param.layer if "label" not in layer.top and "label" not in layer.bottom]
    del param.layer[:]
    param.layer.extend(keep)
    param.force_backward = False
    return format_message(param), sorted({layer.type for layer in keep} - OPENCV_TYPES)


@pytest.mark.parametrize("name", golden_case_names("nets"))
def test_forward_matches_opencv(tmp_path, name):
    case = load_golden("nets", name)
    text, missing = deploy_form(case)
    if missing:
        pytest.skip(f"OpenCV's Caffe importer lacks layer type(s) {missing}")
    path = tmp_path / "deploy.prototxt"
    path.write_text(text)
    net = engine.Net(str(path), engine.TEST)
    rng = np.random.RandomState(7)
    for layer_name, blobs in net.params.items():
        for blob in blobs:
            fan_in = max(1, int(np.prod(blob.shape[1:]))) if len(blob.shape) > 1 else 1
            blob.data[...] = rng.randn(*blob.shape).astype(np.float32) / np.sqrt(fan_in)
    net.save(str(tmp_path / "random.caffemodel"))
    image = case.io["input:data"].astype(np.float32)
    image = image / max(1.0, float(np.abs(image).max()))  # keep LRN in its well-conditioned range
    ours = net.forward(data=image)

    cv_net = cv2.dnn.readNetFromCaffe(str(path), str(tmp_path / "random.caffemodel"))
    cv_net.setInput(image)
    # OpenCV fuses in-place ReLUs into the layer before, so blobs rewritten in place hold
    # different stages in the two engines; compare the others
    in_place = {top for layer in net.layers for top, bottom in zip(layer.top_names, layer.bottom_names)
                if top == bottom}
    names = [n for n in ("score", "upscore", "score_fr", "pool5", "pool2", "norm1", "fuse_pool4")
             if n in net.blobs and n not in in_place]
    outs = cv_net.forward(names)
    compared = 0
    for blob_name, theirs in zip(names, outs):
        mine = net.blobs[blob_name].data
        assert theirs.shape == mine.shape, f"{name} {blob_name}: OpenCV {theirs.shape} vs ours {mine.shape}"
        scale = max(float(np.abs(theirs).max()), 1e-6)
        np.testing.assert_allclose(mine, theirs, atol=1e-4 * scale + 1e-6, err_msg=f"{name} {blob_name}")
        compared += 1
    assert compared >= 2 and "score" in ours
