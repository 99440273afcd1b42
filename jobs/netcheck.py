"""Check a model job's network at creation by building its deploy net with the engine.

Building runs Caffe's construction rules (layer types, bottom/top wiring, every layer's shape
checks, e.g. a kernel larger than its input) and gives every parameter blob's shape, so pretrained
weights can be compared blob by blob with what ``copy_from`` will need (Caffe's
``CopyTrainedLayersFrom``: same blob count, ``Blob::ShapeEquals``) before anything is queued.

The build happens in the server process, so it never imports user code: a deploy net with a
Python layer is not built here (its shapes are checked when the runner builds the net).
"""
from engine.blobproto import shape_equals, stored_shape

SHAPE_UNKNOWN_REASON = "the network has a Python layer (built only by the runner)"


class NetworkCheckError(ValueError):
    """The deploy net cannot be built; the message names the layer and Caffe's rule."""


def deploy_param_shapes(deploy):
    """{layer name: [shape of each parameter blob]} of the deploy NetParameter, or None when the
    net is not built here (see SHAPE_UNKNOWN_REASON). Raises NetworkCheckError."""
    if any(layer.type == "Python" for layer in deploy.layer):
        return None
    import engine
    from engine.layer_types.base import LayerError
    from engine.net import NetError
    try:
        net = engine.Net.from_param(deploy, engine.TEST)
    except (NetError, LayerError, ValueError, RuntimeError) as exc:
        raise NetworkCheckError(str(exc)) from None
    return {name: [tuple(blob.shape) for blob in blobs] for name, blobs in net.params.items()}


def _shape_text(shape):
    return "x".join(str(d) for d in shape) or "scalar"


def param_mismatch(layer, stored_blobs, expected_shapes, path):
    """Why ``stored_blobs`` (BlobProtos of one layer in ``path``) cannot fill a layer whose
    parameter blobs have ``expected_shapes``; None when they fit."""
    if len(stored_blobs) != len(expected_shapes):
        return ("%s: %s holds %d blob(s), the network's layer has %d (Caffe: 'Incompatible number of "
                "blobs')" % (layer, path, len(stored_blobs), len(expected_shapes)))
    for j, (blob, expected) in enumerate(zip(stored_blobs, expected_shapes)):
        if not shape_equals(blob, expected):
            what = "weight" if j == 0 else "blob %d" % j
            return ("%s: the network's %s is %s, %s holds %s: these weights were made for another "
                    "network (pick the pretrained model made for this one, or rename the layer so it "
                    "starts from its filler)" % (layer, what, _shape_text(expected), path,
                                                 _shape_text(stored_shape(blob))))
    return None
