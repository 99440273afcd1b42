"""Net surgery on caffemodel files: ImageNet classifiers → FCN starting weights, conv1 RGB ↔ gray.

Everything works on the NetParameter level (no net is built), so it runs without the engine and
on any width: shapes are read from the source blobs and every derived shape is checked.

* An InnerProduct weight ``[O, C·k·k]`` is bit-for-bit the convolution weight ``[O, C, k, k]``
  (Caffe flattens N×C×H×W row-major), so fc6/fc7 become convolutions by a reshape; ``k`` follows
  from the channels of the last convolution (AlexNet 9216 = 256·6·6, VGG-16 25088 = 512·7·7).
* The classifier (fc8) is dropped: its classes are not ours; the score layers start from their fillers.
* Upsampling Deconvolutions get fixed bilinear kernels, one per class (group = classes), the
  same values Caffe's ``bilinear`` filler produces.

Each function writes the new caffemodel and returns a :class:`SurgeryReport` saying what was
copied, reshaped, generated and left to the fillers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array
from caffeseg.engine.caffemodel import read_caffemodel, write_caffemodel
from caffeseg.engine.proto import caffe_pb2

ALEXNET_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
VGG16_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
# Upsampling layers of prototxt/fcn_alexnet.prototxt and prototxt/fcn_8s.prototxt: name -> kernel size.
FCN_ALEXNET_UPSAMPLING = {"upscore": 63}
FCN_8S_UPSAMPLING = {"upscore2_seg": 4, "upscore_pool4_seg": 4, "upscore8_seg": 16}
FCN_ALEXNET_SCORE_LAYERS = ("score_fr",)
FCN_8S_SCORE_LAYERS = ("score_fr_seg", "score_pool4_seg", "score_pool3_seg")


class SurgeryError(ValueError):
    """The source caffemodel does not have the layers or shapes the surgery needs."""


@dataclass
class SurgeryReport:
    source: str
    destination: str
    copied: dict = field(default_factory=dict)      # layer -> list of blob shapes
    reshaped: dict = field(default_factory=dict)    # layer -> (from shape, to shape) of the weight
    generated: dict = field(default_factory=dict)   # layer -> how (e.g. "bilinear 2x1x63x63")
    dropped: list = field(default_factory=list)     # source layers with blobs not carried over
    left_to_filler: list = field(default_factory=list)  # target layers with no weights in the file

    def summary(self) -> str:
        lines = ["%s -> %s" % (self.source, self.destination)]
        for name, shapes in self.copied.items():
            lines.append("  copied     %-18s %s" % (name, ", ".join("x".join(map(str, s)) for s in shapes)))
        for name, (old, new) in self.reshaped.items():
            lines.append("  reshaped   %-18s %s -> %s" % (name, "x".join(map(str, old)), "x".join(map(str, new))))
        for name, how in self.generated.items():
            lines.append("  generated  %-18s %s" % (name, how))
        for name in self.dropped:
            lines.append("  dropped    %s" % name)
        for name in self.left_to_filler:
            lines.append("  filler     %s (not in the file; starts from its weight_filler)" % name)
        return "\n".join(lines)


def bilinear_kernel(size: int) -> np.ndarray:
    """size x size bilinear interpolation kernel, equal to Caffe's ``bilinear`` filler."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    profile = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(profile, profile).astype(np.float32)


def bilinear_upsampling_weight(num_classes: int, size: int) -> np.ndarray:
    """Weight of a Deconvolution with group = num_classes: [num_classes, 1, size, size]."""
    return np.repeat(bilinear_kernel(size)[None, None], num_classes, axis=0)


# ---------------------------------------------------------------- reading helpers

def _layers_with_blobs(net: caffe_pb2.NetParameter, path: str) -> dict:
    """name -> list of float32 arrays (legacy 4-D blobs keep their stored 4-D shape)."""
    layers = {}
    for layer in net.layer:
        if not layer.blobs:
            continue
        if layer.name in layers:
            raise SurgeryError("%s: layer '%s' appears twice" % (path, layer.name))
        layers[layer.name] = [blobproto_to_array(bp, name="%s blob %d" % (layer.name, i))
                              for i, bp in enumerate(layer.blobs)]
    return layers


def _require(layers: dict, names, path: str):
    missing = [n for n in names if n not in layers]
    if missing:
        raise SurgeryError("%s: no weights for layer(s) %s (layers with weights: %s)"
                           % (path, ", ".join(missing), ", ".join(layers) or "none"))


def _bias(arrays, name, expected, path):
    if len(arrays) < 2:
        raise SurgeryError("%s: layer '%s' has no bias blob" % (path, name))
    bias = arrays[1].reshape(-1)
    if bias.size != expected:
        raise SurgeryError("%s: layer '%s' bias has %d values, expected %d" % (path, name, bias.size, expected))
    return bias


def _conv_weight(arrays, name, path):
    weight = arrays[0]
    if weight.ndim != 4:
        raise SurgeryError("%s: layer '%s' weight should be 4-D (O x C x k x k), got shape %s"
                           % (path, name, weight.shape))
    return weight


def _ip_weight(arrays, name, path):
    """InnerProduct weight as [O, K] (the legacy layout is 1 x 1 x O x K)."""
    weight = arrays[0]
    if weight.ndim == 4 and weight.shape[:2] == (1, 1):
        weight = weight.reshape(weight.shape[2:])
    if weight.ndim != 2:
        raise SurgeryError("%s: layer '%s' is not an InnerProduct weight (shape %s)" % (path, name, arrays[0].shape))
    return weight


def _fc_to_conv(arrays, name, in_channels, path):
    """[O, C·k·k] -> [O, C, k, k] with k derived from the input channels; checks it is square."""
    weight = _ip_weight(arrays, name, path)
    outputs, inputs = weight.shape
    if inputs % in_channels:
        raise SurgeryError("%s: layer '%s' has %d inputs, not a multiple of the %d channels feeding it"
                           % (path, name, inputs, in_channels))
    side = int(round(np.sqrt(inputs // in_channels)))
    if side * side * in_channels != inputs:
        raise SurgeryError("%s: layer '%s' has %d inputs = %d channels x %d, not a square kernel"
                           % (path, name, inputs, in_channels, inputs // in_channels))
    return weight.reshape(outputs, in_channels, side, side), _bias(arrays, name, outputs, path)


# ---------------------------------------------------------------- writing

def _add_layer(net: caffe_pb2.NetParameter, name: str, type_name: str, arrays):
    layer = net.layer.add()
    layer.name = name
    layer.type = type_name
    for array in arrays:
        layer.blobs.append(array_to_blobproto(np.ascontiguousarray(array, dtype=np.float32)))


def _classifier_to_fcn(src, dst, convs, upsampling, score_layers, num_classes, gray, net_name):
    if num_classes < 1:
        raise SurgeryError("num_classes must be at least 1, got %d" % num_classes)
    source = read_caffemodel(str(src))
    layers = _layers_with_blobs(source, str(src))
    _require(layers, list(convs) + ["fc6", "fc7"], str(src))
    report = SurgeryReport(source=str(src), destination=str(dst))
    out = caffe_pb2.NetParameter()
    out.name = net_name

    previous_out = None
    for index, name in enumerate(convs):
        weight = _conv_weight(layers[name], name, str(src))
        bias = _bias(layers[name], name, weight.shape[0], str(src))
        if previous_out is not None and previous_out % weight.shape[1]:
            raise SurgeryError("%s: layer '%s' takes %d channels per group, which does not divide the %d "
                               "outputs of the layer before" % (src, name, weight.shape[1], previous_out))
        if index == 0 and gray:
            if weight.shape[1] != 3:
                raise SurgeryError("%s: layer '%s' has %d input channels, channel surgery needs 3 (RGB)"
                                   % (src, name, weight.shape[1]))
            gray_weight = weight.sum(axis=1, keepdims=True)
            report.reshaped[name] = (weight.shape, gray_weight.shape)
            weight = gray_weight
        else:
            report.copied[name] = [weight.shape, bias.shape]
        _add_layer(out, name, "Convolution", [weight, bias])
        previous_out = weight.shape[0]

    fc6_weight, fc6_bias = _fc_to_conv(layers["fc6"], "fc6", previous_out, str(src))
    fc7_weight, fc7_bias = _fc_to_conv(layers["fc7"], "fc7", fc6_weight.shape[0], str(src))
    for name, weight, bias in (("fc6", fc6_weight, fc6_bias), ("fc7", fc7_weight, fc7_bias)):
        report.reshaped[name] = (_ip_weight(layers[name], name, str(src)).shape, weight.shape)
        _add_layer(out, name, "Convolution", [weight, bias])

    for name, size in upsampling.items():
        _add_layer(out, name, "Deconvolution", [bilinear_upsampling_weight(num_classes, size)])
        report.generated[name] = "bilinear %dx1x%dx%d (group %d, no bias)" % (num_classes, size, size, num_classes)

    report.dropped = [n for n in layers if n not in convs and n not in ("fc6", "fc7")]
    report.left_to_filler = list(score_layers)
    write_caffemodel(str(dst), out)
    return report


def alexnet_to_fcn(src_caffemodel, dst_caffemodel, num_classes=2, gray=False,
                   upsampling=None, score_layers=FCN_ALEXNET_SCORE_LAYERS) -> SurgeryReport:
    """bvlc_alexnet (or CaffeNet) classifier -> weights for prototxt/fcn_alexnet.prototxt.

    conv1..conv5 copied, fc6 [O, C·6·6] -> [O, C, 6, 6], fc7 [O, O6] -> [O, O6, 1, 1], fc8 dropped,
    ``upscore`` bilinear for ``num_classes``. ``gray=True`` also sums conv1 over RGB for 1-channel data.
    """
    return _classifier_to_fcn(src_caffemodel, dst_caffemodel, ALEXNET_CONVS,
                              FCN_ALEXNET_UPSAMPLING if upsampling is None else upsampling,
                              score_layers, num_classes, gray, "fcn_alexnet")


def vgg16_to_fcn8s(src_caffemodel, dst_caffemodel, num_classes=2, gray=False,
                   upsampling=None, score_layers=FCN_8S_SCORE_LAYERS) -> SurgeryReport:
    """VGG-16 classifier -> trunk weights for prototxt/fcn_8s.prototxt.

    conv1_1..conv5_3 copied, fc6 [O, 512·7·7] -> [O, 512, 7, 7], fc7 -> 1x1, fc8 dropped, the three
    upsampling layers bilinear; the score layers are left to their fillers.
    """
    return _classifier_to_fcn(src_caffemodel, dst_caffemodel, VGG16_CONVS,
                              FCN_8S_UPSAMPLING if upsampling is None else upsampling,
                              score_layers, num_classes, gray, "fcn_8s")


def _first_conv_with_channels(source, channels, layer, path):
    """The layer ``layer`` (or the first with a 4-D weight of ``channels`` input channels) and its weight."""
    for entry in source.layer:
        if not entry.blobs:
            continue
        shape = blobproto_to_array(entry.blobs[0], name=entry.name).shape
        if (layer is None and len(shape) == 4 and shape[1] == channels) or entry.name == layer:
            weight = blobproto_to_array(entry.blobs[0], name=entry.name)
            if weight.ndim != 4 or weight.shape[1] != channels:
                raise SurgeryError("%s: layer '%s' weight has shape %s, this channel surgery needs O x %d x k x k"
                                   % (path, entry.name, weight.shape, channels))
            return entry, weight
    if layer is not None:
        raise SurgeryError("%s: no layer named '%s' with weights" % (path, layer))
    hint = {3: "the weights are already for 1-channel data (use them as they are, or 'caffeseg surgery "
               "gray-to-rgb' for an RGB dataset)",
            1: "the weights are already for 3-channel data (use them as they are, or 'caffeseg surgery "
               "rgb-to-gray' for a gray dataset)"}[channels]
    raise SurgeryError("%s: no convolution with %d input channel%s: %s"
                       % (path, channels, "s" if channels > 1 else "", hint))


def _replace_conv1(src_caffemodel, dst_caffemodel, channels, layer, convert) -> SurgeryReport:
    source = read_caffemodel(str(src_caffemodel))
    report = SurgeryReport(source=str(src_caffemodel), destination=str(dst_caffemodel))
    target, weight = _first_conv_with_channels(source, channels, layer, src_caffemodel)
    new_weight = convert(weight)
    target.blobs[0].CopyFrom(array_to_blobproto(new_weight))
    report.reshaped[target.name] = (weight.shape, new_weight.shape)
    report.copied = {e.name: [blobproto_to_array(b).shape for b in e.blobs]
                     for e in source.layer if e.blobs and e.name != target.name}
    write_caffemodel(str(dst_caffemodel), source)
    return report


def rgb_to_gray_conv1(src_caffemodel, dst_caffemodel, layer=None) -> SurgeryReport:
    """Sum the first convolution's weights over its 3 input channels (RGB-pretrained -> 1-channel data).

    A gray image g fed as three equal channels gives Σ_c W_c·g = (Σ_c W_c)·g, so the summed filter
    reproduces the RGB net on gray input exactly. ``layer`` names the convolution; by default the
    first layer whose weight has 3 input channels. Every other layer is written back unchanged.
    """
    return _replace_conv1(src_caffemodel, dst_caffemodel, 3, layer,
                          lambda w: w.sum(axis=1, keepdims=True))


def gray_to_rgb_conv1(src_caffemodel, dst_caffemodel, layer=None) -> SurgeryReport:
    """Spread a 1-channel first convolution over 3 input channels (gray weights -> RGB data).

    Each RGB channel gets W/3, so an RGB image whose three channels equal a gray image g gives
    Σ_c (W/3)·g = W·g: the converted net answers a gray-as-RGB image exactly as the gray net
    answers g (the RGB datasets of the lab are gray slices stored as three equal channels).
    ``layer`` names the convolution; by default the first layer whose weight has 1 input channel.
    """
    return _replace_conv1(src_caffemodel, dst_caffemodel, 1, layer,
                          lambda w: np.repeat(w / np.float32(3), 3, axis=1).astype(w.dtype))
