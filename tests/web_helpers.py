"""Shared set-up of the web tests that use real files: a dataset folder as the builder writes it."""
from __future__ import annotations

import numpy as np


def write_lmdb_dataset(folder, counts: dict, side: int, scale: int, box: tuple[int, int]) -> None:
    """``<stage>_db/features`` and ``labels`` LMDBs of Datums, keys ``00000000``… per stage.

    Feature ``i`` is the uint16 ramp ``arange(side²) * scale + i`` (1×side×side); every label is
    class 1 on the square ``box[0]:box[1]`` in both axes, 0 elsewhere."""
    from caffeseg.engine.datum import array_to_datum
    from caffeseg.engine.lmdb_io import LmdbWriter
    for stage, count in counts.items():
        for part in ("features", "labels"):
            path = folder / f"{stage}_db" / part
            path.parent.mkdir(parents=True, exist_ok=True)
            with LmdbWriter(str(path)) as writer:
                for i in range(count):
                    if part == "features":
                        arr = np.arange(side * side, dtype=np.uint16).reshape(1, side, side) * scale + i
                    else:
                        arr = np.zeros((1, side, side), np.uint8)
                        arr[0, box[0]:box[1], box[0]:box[1]] = 1
                    writer.put(f"{i:08d}", array_to_datum(arr).SerializeToString())


def write_weights(path, layers: dict) -> None:
    """A .caffemodel with ``{layer name: [arrays]}`` (the blobs copy_from matches by name)."""
    from caffeseg.engine.blobproto import array_to_blobproto
    from caffeseg.engine.caffemodel import write_caffemodel
    from caffeseg.engine.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="weights")
    for name, arrays in layers.items():
        layer = net.layer.add(name=name, type="Convolution")
        for array in arrays:
            layer.blobs.append(array_to_blobproto(array))
    write_caffemodel(str(path), net)
