"""Binary ``.caffemodel`` (NetParameter) and ``.solverstate`` (SolverState) files.

Reading follows Caffe's ``ReadNetParamsFromBinaryFileOrDie``: the whole file is parsed (Caffe
lifts protobuf's 64 MB limit to 2 GiB; the upb backend has no such limit, so 0.5 GB models load)
and then upgraded exactly like a prototxt (V0/V1 ``layers`` -> ``layer``, legacy inputs, ...,
see ``engine.upgrade``). Blobs keep their stored (possibly legacy 4-D) dims; use
``engine.blobproto.blobproto_to_array(bp, target_shape)`` to get arrays.

Protobuf happily "parses" many non-protobuf byte strings into unknown fields, so every read also
checks that the result looks like the message it claims to be; a bad file raises
``CaffemodelError`` naming the file and the reason.
"""

import os
import warnings

from google.protobuf.message import DecodeError

from caffeseg.engine.blobproto import blobproto_to_array
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.upgrade import UpgradeError, upgrade_net

try:  # protobuf >= 4.21 (upb): unknown fields are read through this helper
    from google.protobuf.unknown_fields import UnknownFieldSet as _UnknownFieldSet
except ImportError:  # pragma: no cover - older protobuf exposes msg.UnknownFields()
    _UnknownFieldSet = None

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class CaffemodelError(ValueError):
    """A .caffemodel or .solverstate file that cannot be used."""


def _unknown_field_numbers(msg):
    fields = _UnknownFieldSet(msg) if _UnknownFieldSet else msg.UnknownFields()
    return sorted({f.field_number for f in fields})


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CaffemodelError("%s: file not found" % path) from None
    except IsADirectoryError:
        raise CaffemodelError("%s: is a directory, not a %s file" % (path, what)) from None
    except OSError as err:
        raise CaffemodelError("%s: cannot read: %s" % (path, err.strerror)) from None
    if not raw:
        raise CaffemodelError("%s: the file is empty, not a %s" % (path, what))
    if raw.startswith(_HDF5_SIGNATURE):
        raise CaffemodelError("%s: is an HDF5 file; only binary protobuf %s files are "
                              "supported (snapshot_format: BINARYPROTO)" % (path, what))
    return raw


def _parse(raw, msg, path, what, strict=True):
    """Parse ``raw`` into ``msg``; with ``strict`` unknown top-level fields are an error."""
    try:
        msg.ParseFromString(raw)
    except DecodeError:
        raise CaffemodelError("%s: not a valid %s (the protobuf data is truncated or corrupt)"
                              % (path, what)) from None
    unknown = _unknown_field_numbers(msg)
    if unknown and strict:
        raise CaffemodelError("%s: not a %s: it holds fields this schema does not define "
                              "(numbers %s); the file is corrupt or of another kind"
                              % (path, what, _numbers(unknown)))
    return msg, unknown


def _numbers(unknown):
    return ", ".join(map(str, unknown[:8])) + (", ..." if len(unknown) > 8 else "")


def parse_caffemodel(raw, source="<bytes>", upgrade=True):
    """Parse serialized NetParameter bytes (see ``read_caffemodel``)."""
    what = "Caffe model (.caffemodel)"
    if raw.startswith(_HDF5_SIGNATURE):
        raise CaffemodelError("%s: is an HDF5 file; only binary protobuf caffemodels are "
                              "supported" % source)
    net, unknown = _parse(raw, caffe_pb2.NetParameter(), source, what, strict=False)
    if not len(net.layer) and not len(net.layers):
        raise CaffemodelError("%s: not a %s: it contains no layers%s (empty, truncated or "
                              "another kind of file)"
                              % (source, what, " but fields this schema does not define "
                                 "(numbers %s)" % _numbers(unknown) if unknown else ""))
    if unknown:
        # Caffe forks add NetParameter fields; the layers and weights are still usable.
        warnings.warn("%s: fields unknown to this schema (numbers %s) are ignored"
                      % (source, _numbers(unknown)))
    for layer in list(net.layer) + list(net.layers):
        unknown = _unknown_field_numbers(layer)
        if unknown:
            # Caffe forks add layer fields; the weights are still usable, so only warn.
            warnings.warn("%s: layer \"%s\" has fields unknown to this schema (numbers %s); "
                          "they are ignored" % (source, layer.name, _numbers(unknown)))
    if upgrade:
        try:
            for message in upgrade_net(net):
                warnings.warn("%s: %s" % (source, message))
        except UpgradeError as err:
            raise CaffemodelError("%s: %s" % (source, err)) from None
    return net


def read_caffemodel(path, upgrade=True):
    """Read a binary ``.caffemodel`` into an upgraded ``NetParameter``."""
    path = str(path)
    return parse_caffemodel(_read_bytes(path, "Caffe model (.caffemodel)"), path, upgrade)


def _write_atomically(path, data):
    # A crash mid-write must not leave a truncated snapshot under the final name.
    path = str(path)
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_caffemodel(path, net_param):
    """Write a NetParameter as a binary ``.caffemodel``."""
    _write_atomically(path, net_param.SerializeToString())


def layer_arrays(net_param):
    """``{layer name: [float32 arrays]}`` for the layers with blobs, in file order.

    Arrays take their stored shape (legacy blobs are 4-D); when the same name occurs twice the
    later layer wins, as in ``Net::CopyTrainedLayersFrom``.
    """
    result = {}
    for layer in net_param.layer:
        if len(layer.blobs):
            result[layer.name] = [
                blobproto_to_array(bp, name='layer "%s" blob %d' % (layer.name, i))
                for i, bp in enumerate(layer.blobs)]
    return result


def read_solverstate(path):
    """Read a binary ``.solverstate`` (SolverState: iter, learned_net, history, current_step)."""
    path = str(path)
    what = "Caffe solver state (.solverstate)"
    state, _ = _parse(_read_bytes(path, what), caffe_pb2.SolverState(), path, what)
    if state.iter < 0 or state.current_step < 0:
        raise CaffemodelError("%s: not a %s: negative iter (%d) or current_step (%d)"
                              % (path, what, state.iter, state.current_step))
    return state


def write_solverstate(path, state):
    """Write a SolverState as a binary ``.solverstate``."""
    _write_atomically(path, state.SerializeToString())
