"""Caffe's implicit Split layers (``InsertSplits``): named ``<blob>_<producing layer>_<top index>_split``,
with tops ``<...>_split_<k>``.

A blob read by several later layers (or read once and also weighted as a loss) is routed
through a ``Split`` layer, so each consumer gets its own top and the gradients add up.
"""
from __future__ import annotations

from caffeseg.engine.proto import caffe_pb2


class UnknownBottomError(ValueError):
    """A layer reads a blob that no earlier layer produces."""


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_top_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{split_layer_name(blob, layer, top_index)}_{k}"


def insert_splits(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    layers = list(param.layer)
    producer: dict[str, tuple[int, int]] = {}           # blob -> (layer index, top index), latest wins
    bottom_source: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottom):
            if blob not in producer:
                raise UnknownBottomError(
                    f"layer '{layer.name}' ({layer.type}): unknown bottom blob '{blob}' "
                    f"(no earlier layer produces it)")
            source = producer[blob]
            bottom_source[(i, j)] = source
            consumers[source] = consumers.get(source, 0) + 1
        for j, blob in enumerate(layer.top):
            producer[blob] = (i, j)
    # an explicit non-zero loss weight counts as one more consumer
    loss_weighted = set()
    for i, layer in enumerate(layers):
        for j in range(len(layer.top)):
            if j < len(layer.loss_weight) and layer.loss_weight[j] != 0:
                loss_weighted.add((i, j))
                consumers[(i, j)] = consumers.get((i, j), 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split_top: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(layer)
        for j in range(len(copy.bottom)):
            source = bottom_source[(i, j)]
            if consumers.get(source, 0) > 1:
                src_layer = layers[source[0]]
                blob = src_layer.top[source[1]]
                k = next_split_top.setdefault(source, 1 if source in loss_weighted else 0)
                copy.bottom[j] = split_top_name(blob, src_layer.name, source[1], k)
                next_split_top[source] = k + 1
        produced = out.layer.add()
        produced.CopyFrom(copy)
        for j, blob in enumerate(layer.top):
            count = consumers.get((i, j), 0)
            if count <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(blob, layer.name, j)
            split.type = "Split"
            split.bottom.append(blob)
            for k in range(count):
                split.top.append(split_top_name(blob, layer.name, j, k))
            if (i, j) in loss_weighted:
                # the loss moves to split top 0
                weight = layer.loss_weight[j]
                produced.ClearField("loss_weight")
                split.loss_weight.extend([weight] + [0.0] * (count - 1))
    return out
