"""Known public pretrained Caffe models and a resumable, verified downloader (urllib only).

Checksums recorded here were looked up, not computed by us:
* bvlc_alexnet: sha1 from BVLC/caffe ``models/bvlc_alexnet/readme.md``; also listed in OpenCV's
  ``opencv_extra/testdata/dnn/download_models.py``.
* fcn8s-heavy-pascal: URL from fcn.berkeleyvision.org ``voc-fcn8s/caffemodel-url``; sha1 from
  OpenCV's ``download_models.py`` (the same URL).
* VGG16: URL from the VGG page / ksimonyan's gist 211839e770f7b538e2d8. No published checksum was
  found: the download is checked against the server's Content-Length only (``sha1=None``).
No byte size is recorded for any of them (none could be verified from a published source); the
size check uses the server's Content-Length / Content-Range instead.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class KnownModel:
    name: str
    url: str
    filename: str
    sha1: Optional[str]       # None: no published checksum (size check only)
    size: Optional[int]       # None: not published; the server's length is used
    description: str
    use: str                  # how the project turns it into segmentation weights
    conversion: Optional[str] = None  # jobs.surgery function that makes FCN weights of it
    network: Optional[str] = None     # the prototxt/ network (stem) these weights start
    approx_bytes: Optional[int] = None  # shown before downloading: 4 bytes per parameter of the net


KNOWN_MODELS = {
    "bvlc_alexnet": KnownModel(
        name="bvlc_alexnet",
        url="http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
        filename="bvlc_alexnet.caffemodel",
        sha1="9116a64c0fbe4459d18f4bb6b56d647b63920377",
        size=None,
        description="BVLC AlexNet, ImageNet ILSVRC2012 classifier (RGB, BGR mean-subtracted input)",
        use="made into FCN-AlexNet weights (fc6/fc7 become convolutions; for 1-channel data conv1's RGB "
            "filters are summed into one gray filter)",
        conversion="alexnet_to_fcn",
        network="fcn_alexnet",
        approx_bytes=244 * 10 ** 6,  # 61.0 M parameters
    ),
    "fcn8s-heavy-pascal": KnownModel(
        name="fcn8s-heavy-pascal",
        url="http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel",
        filename="fcn8s-heavy-pascal.caffemodel",
        sha1="c449ea74dd7d83751d1357d6a8c323fcf4038962",
        size=None,
        description="FCN-8s trained on PASCAL VOC (21 classes), Long et al. 2015",
        use="loaded into FCN-8s as it is: the trunk (conv1_1 … fc7) loads, the 2-class score layers start "
            "from their fillers",
        network="fcn_8s",
        approx_bytes=538 * 10 ** 6,  # 134.5 M parameters (21-class heads)
    ),
    "VGG16": KnownModel(
        name="VGG16",
        url="http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel",
        filename="VGG_ILSVRC_16_layers.caffemodel",
        sha1=None,
        size=None,
        description="VGG ILSVRC 16-layer classifier (Simonyan & Zisserman 2014)",
        use="made into FCN-8s weights (fc6/fc7 become convolutions)",
        conversion="vgg16_to_fcn8s",
        network="fcn_8s",
        approx_bytes=553 * 10 ** 6,  # 138.4 M parameters
    ),
}


class PretrainedError(RuntimeError):
    """A download that could not be completed or verified; the message names the model and URL."""


def unreachable_advice(name):
    """The ways to a known model when its published address cannot be reached (offline, proxy)."""
    return ("Other ways: a copy on a reachable server (CAFFESEG_PRETRAINED_MIRRORS=\"%s=URL\" for the web's "
            "Prepare, or 'caffeseg pretrained %s --url URL'), or download the file elsewhere and upload "
            "it on the Pretrained Models tab" % (name, name))


def sha1_of(path, chunk=CHUNK_BYTES) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _model(name) -> KnownModel:
    if isinstance(name, KnownModel):
        return name
    if name not in KNOWN_MODELS:
        raise PretrainedError("unknown pretrained model %r (known: %s)" % (name, ", ".join(KNOWN_MODELS)))
    return KNOWN_MODELS[name]


def _verify(model: KnownModel, path: Path, expected_size, source):
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise PretrainedError("%s: %s has %d bytes, expected %d (from %s)"
                              % (model.name, path, size, expected_size, source))
    if model.sha1:
        actual = sha1_of(path)
        if actual != model.sha1.lower():
            raise PretrainedError("%s: checksum mismatch for %s: sha1 %s, expected %s (from %s)"
                                  % (model.name, path, actual, model.sha1, source))


def _total_from_headers(response, offset):
    """Full file size from Content-Range (206) or Content-Length (200), or None."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    if length and length.isdigit():
        return int(length) + (offset if response.status == 206 else 0)
    return None


def _download_once(url, partial: Path, timeout, progress):
    """One HTTP request, resuming from what `partial` holds. Returns the full size if known."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "caffeseg-pretrained/1"})
    if offset:
        request.add_header("Range", "bytes=%d-" % offset)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the partial file is complete
            return offset
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        total = _total_from_headers(response, offset)
        with open(partial, "ab" if offset else "wb") as out:
            done = offset
            while True:
                block = response.read(CHUNK_BYTES)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    if total is not None and done < total:
        raise http.client.IncompleteRead(b"", total - done)
    return total


def fetch(name, dest_dir, url=None, progress: Optional[Callable[[int, Optional[int]], None]] = None,
          retries=5, timeout=60) -> Path:
    """Download a known model (or a :class:`KnownModel`) into ``dest_dir`` and verify it.

    ``url`` replaces the published address (a mirror); the checksum stays. An existing verified
    file is returned without a request. An interrupted transfer continues from the ``.part``
    file with an HTTP Range request (up to ``retries`` resumptions, also across calls). The size
    is checked against the known size or the server's length, then the sha1 when one is known;
    a file that fails the check is deleted and PretrainedError raised.
    ``progress(bytes_done, total_or_None)`` is called after every chunk.
    """
    model = _model(name)
    source = url or model.url
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / model.filename
    if target.exists():
        try:
            _verify(model, target, model.size, "the catalogue")
            return target
        except PretrainedError:
            target.unlink()  # a stale or corrupt copy: download again

    partial = dest_dir / (model.filename + ".part")
    last_error = None
    total = None
    for _attempt in range(retries + 1):
        try:
            total = _download_once(source, partial, timeout, progress)
            last_error = None
            break
        except urllib.error.HTTPError as exc:
            raise PretrainedError("%s: HTTP %d %s from %s. %s" % (model.name, exc.code, exc.reason, source,
                                                                 unreachable_advice(model.name)))
        except (http.client.IncompleteRead, http.client.HTTPException, ConnectionError,
                socket.timeout, TimeoutError, urllib.error.URLError) as exc:
            last_error = exc  # resume with a Range request
    if last_error is not None:
        raise PretrainedError("%s: download from %s failed after %d attempts (%s); %d bytes kept in %s, "
                              "the next attempt resumes from there. %s"
                              % (model.name, source, retries + 1, last_error,
                                 partial.stat().st_size if partial.exists() else 0, partial,
                                 unreachable_advice(model.name)))
    try:
        _verify(model, partial, model.size if model.size is not None else total, source)
    except PretrainedError:
        partial.unlink()
        raise
    os.replace(partial, target)
    return target


def prepare(name, dest_dir, gray=False, num_classes=2, url=None, progress=None):
    """Fetch a known model and turn it into starting weights for our segmentation prototxts.

    Classifiers go through their surgery (``conversion``); an FCN model is used as it is, or
    with conv1 summed over RGB when ``gray``. Returns (path of the weights, SurgeryReport or
    None when the downloaded file is used unchanged). Converted files are written beside the
    download as ``<stem>-fcn[-gray].caffemodel``.
    """
    from caffeseg.jobs import surgery  # only needed here; keeps `fetch` free of the engine's imports

    model = _model(name)
    downloaded = fetch(model, dest_dir, url=url, progress=progress)
    target = prepared_path(model, dest_dir, gray)
    if model.conversion:
        convert = getattr(surgery, model.conversion)
        return target, convert(downloaded, target, num_classes=num_classes, gray=gray)
    if gray:
        return target, surgery.rgb_to_gray_conv1(downloaded, target)
    return downloaded, None


def prepared_path(name, dest_dir, gray=False) -> Path:
    """Where :func:`prepare` writes (or finds) the segmentation weights of a known model:
    ``<stem>-fcn[-gray].caffemodel`` for a converted classifier, ``<stem>-gray.caffemodel`` for
    an FCN with conv1 summed over RGB, the download itself otherwise."""
    model = _model(name)
    filename = model.filename
    stem = filename[: -len(".caffemodel")] if filename.endswith(".caffemodel") else filename
    suffix = "-gray" if gray else ""
    if model.conversion:
        return Path(dest_dir) / ("%s-fcn%s.caffemodel" % (stem, suffix))
    if gray:
        return Path(dest_dir) / ("%s%s.caffemodel" % (stem, suffix))
    return Path(dest_dir) / filename


# `caffeseg surgery` kinds of the conversion functions.
SURGERY_KINDS = {"alexnet_to_fcn": "alexnet-fcn", "vgg16_to_fcn8s": "vgg16-fcn8s"}


def network_weights(name, dest_dir, gray=False) -> dict:
    """A known model as a network source: the prototxt/ network it starts and its weights.

    Returns ``{"network", "weights" (path), "ready" (the weights file exists), "downloaded",
    "steps"}``; ``steps`` are the commands that make the weights when they are not there yet
    (fetch, then the surgery :func:`prepare` would run), none when ready. Nothing is faked:
    a model is ready only when its converted file is on disk."""
    model = _model(name)
    dest_dir = Path(dest_dir)
    download = dest_dir / model.filename
    weights = prepared_path(model, dest_dir, gray)
    steps = []
    if not weights.is_file():
        if not download.is_file():
            steps.append("caffeseg pretrained %s --dest %s" % (model.name, dest_dir))
        if model.conversion:
            steps.append("caffeseg surgery %s %s %s%s" % (SURGERY_KINDS[model.conversion], download, weights,
                                                         " --gray" if gray else ""))
        elif gray:
            steps.append("caffeseg surgery rgb-to-gray %s %s" % (download, weights))
    return {"network": model.network, "weights": str(weights), "ready": weights.is_file(),
            "downloaded": download.is_file(), "steps": steps}


# -- pretrained models uploaded by users (DIGITS' "Upload Pretrained Model") -----------------------

UPLOAD_DIR_NAME = "uploaded"
UPLOAD_NETWORK = "network.prototxt"
UPLOAD_WEIGHTS = "weights.caffemodel"
UPLOAD_INFO = "info.json"
UPLOAD_LABELS = "labels.txt"
#: files an upload may keep beside its network and weights (the deploy net, the mean image)
UPLOAD_EXTRA_FILES = ("deploy.prototxt", "mean.binaryproto")
IMAGE_TYPES = {"gray": 1, "grayscale": 1, "1": 1, "color": 3, "colour": 3, "rgb": 3, "3": 3}
RESIZE_MODES = ("squash", "crop", "fill", "half_crop")  # DIGITS' resize modes
MAX_LABELS_BYTES = 1 << 20
MAX_PROTOTXT_BYTES = 1 << 20
_UPLOAD_ID = re.compile(r"^up-[0-9a-f]{12}$")
_UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+()-]{0,63}$")


class UploadError(ValueError):
    """An uploaded pretrained model that is refused; ``field`` names the form field at fault."""

    def __init__(self, message, field=None):
        ValueError.__init__(self, message)
        self.field = field


def uploads_dir(dest_dir) -> Path:
    return Path(dest_dir) / UPLOAD_DIR_NAME


def _upload_folder(dest_dir, upload_id) -> Path:
    if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
        raise KeyError("unknown uploaded pretrained model %r" % (upload_id,))
    folder = uploads_dir(dest_dir) / upload_id
    if not (folder / UPLOAD_INFO).is_file():
        raise KeyError("unknown uploaded pretrained model %r" % (upload_id,))
    return folder


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# (NetParameter field, name field, blobs field, nested V0 layer field) of the layer messages:
# ``layer`` (100, LayerParameter), legacy ``layers`` (2, V1LayerParameter, whose field 1 may hold a
# V0LayerParameter: name 1, blobs 50).
_LAYER_FIELDS = {100: (1, 7, None), 2: (4, 6, 1)}
_V0_FIELDS = (1, 50, None)
_MAX_NAME_BYTES = 1 << 16


def _varint(f, end):
    value = shift = 0
    while True:
        if f.tell() >= end:
            raise ValueError("truncated (a field runs past the end of its message)")
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _wire_fields(f, end):
    """Yield ``(number, wire type, (start, length) | None)`` of the protobuf fields up to ``end``;
    a length-delimited payload is skipped with seek after the consumer is done with it."""
    while f.tell() < end:
        key = _varint(f, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _varint(f, end)
            yield number, wire, None
        elif wire in (1, 5):
            skip = 8 if wire == 1 else 4
            if f.tell() + skip > end:
                raise ValueError("truncated")
            f.seek(skip, os.SEEK_CUR)
            yield number, wire, None
        elif wire == 2:
            length = _varint(f, end)
            start = f.tell()
            if start + length > end:
                raise ValueError("truncated (a field runs past the end of its message)")
            yield number, wire, (start, length)
            f.seek(start + length)
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)


def _scan_layer(f, start, length, fields):
    name_field, blobs_field, v0_field = fields
    name, blobs = None, 0
    f.seek(start)
    for number, wire, span in _wire_fields(f, start + length):
        if wire != 2:
            continue
        if number == name_field:
            if span[1] > _MAX_NAME_BYTES:
                raise ValueError("a layer name of %d bytes" % span[1])
            name = f.read(span[1]).decode("utf-8", "replace")
        elif number == blobs_field:
            blobs += 1  # the blob's payload is skipped, never read
        elif number == v0_field:
            v0_name, v0_blobs = _scan_layer(f, span[0], span[1], _V0_FIELDS)
            name = name if name is not None else v0_name
            blobs += v0_blobs
    return name, blobs


def scan_caffemodel_layers(source):
    """``[(layer name, blob count)]`` of a binary .caffemodel, in file order, by streaming its
    protobuf wire format: the layer records (NetParameter ``layer`` = 100, legacy ``layers`` = 2)
    are walked and their blobs skipped with seek, so a 1 GiB file costs a few kilobytes of reads.
    ``source``: a path or a seekable binary file. Raises ValueError for a file that is not one
    (HDF5, malformed or truncated records, no layers). Blob contents are not checked here
    (``engine.caffemodel.read_caffemodel`` does, when a job uses the weights)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return scan_caffemodel_layers(f)
    f = source
    begin = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(begin)
    if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
        raise ValueError("an HDF5 file; only binary protobuf caffemodels are supported")
    f.seek(begin)
    layers = []
    for number, wire, span in _wire_fields(f, end):
        if wire == 2 and number in _LAYER_FIELDS:
            name, blobs = _scan_layer(f, span[0], span[1], _LAYER_FIELDS[number])
            layers.append((name or "", blobs))
    if not layers:
        raise ValueError("it contains no layers (empty, truncated or another kind of file)")
    return layers


def _check_upload_network(name, prototxt):
    """The checked (name, network text, parsed net) of an upload; raises UploadError."""
    from caffeseg.engine.prototxt import PrototxtError, parse_net

    name = (name or "").strip()
    if not _UPLOAD_NAME.match(name):
        raise UploadError("a name of 1-64 letters, digits, spaces or _.+()- starting with a letter or digit", "name")
    if isinstance(prototxt, bytes):
        if len(prototxt) > MAX_PROTOTXT_BYTES:
            raise UploadError("the network file is larger than %d bytes" % MAX_PROTOTXT_BYTES, "prototxt")
        try:
            prototxt = prototxt.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError("the network file is not UTF-8 text", "prototxt") from None
    if not (prototxt or "").strip():
        raise UploadError("the network (.prototxt) is missing", "prototxt")
    try:
        net = parse_net(prototxt, source="uploaded network")
    except PrototxtError as exc:
        raise UploadError("the network does not parse: %s" % exc, "prototxt") from None
    if not len(net.layer):
        raise UploadError("the network has no layers", "prototxt")
    return name, prototxt, net


def _check_upload_weights(path, net):
    """The weighted layers of ``path`` named as in ``net`` (streamed, see scan_caffemodel_layers)."""
    try:
        layers = scan_caffemodel_layers(str(path))
    except (OSError, ValueError) as exc:
        raise UploadError("the weights are not a readable .caffemodel (%s)" % exc, "weights") from None
    weighted = [layer_name for layer_name, blobs in layers if blobs]
    if not weighted:
        raise UploadError("the .caffemodel holds no weights", "weights")
    names = {layer.name for layer in net.layer}
    matched = [n for n in weighted if n in names]
    if not matched:
        raise UploadError("no layer of the weights is named as a layer of the network (weights: %s)"
                          % ", ".join(weighted[:8]), "weights")
    return matched


def check_upload_image(image):
    """The upload form's image fields (DIGITS: image type, resize mode, width, height) checked:
    {"channels" 1|3, "type" gray|color, "resize_mode", "width", "height"} or None; UploadError
    names the field."""
    if not image or not any(v not in (None, "") for v in image.values()):
        return None
    kind = str(image.get("type") or image.get("image_type") or "").strip().lower()
    if kind not in IMAGE_TYPES:
        raise UploadError("image type: gray or color", "image_type")
    mode = str(image.get("resize_mode") or "squash").strip().lower()
    if mode not in RESIZE_MODES:
        raise UploadError("resize mode: one of %s" % ", ".join(RESIZE_MODES), "resize_mode")
    out = {"channels": IMAGE_TYPES[kind], "type": "gray" if IMAGE_TYPES[kind] == 1 else "color", "resize_mode": mode}
    for field in ("width", "height"):
        value = image.get(field)
        if value in (None, ""):
            out[field] = None
            continue
        try:
            number = int(str(value).strip())
        except ValueError:
            number = 0
        if not 1 <= number <= 65536:
            raise UploadError("%s: a whole number of pixels, 1-65536" % field, field)
        out[field] = number
    return out


def check_upload_labels(labels):
    """A labels file (bytes/str, one class per line) or a list of names → the class names."""
    if labels is None:
        return None
    if isinstance(labels, (bytes, bytearray)):
        if len(labels) > MAX_LABELS_BYTES:
            raise UploadError("the labels file is larger than %d bytes" % MAX_LABELS_BYTES, "labels_file")
        try:
            labels = labels.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError("the labels file is not UTF-8 text", "labels_file") from None
    names = [line.strip() for line in labels.splitlines()] if isinstance(labels, str) else [str(n).strip() for n in labels]
    names = [n for n in names if n]
    if not names:
        return None
    if len(names) > 4096 or any(len(n) > 256 for n in names):
        raise UploadError("at most 4096 labels of up to 256 characters each", "labels_file")
    return names


def save_upload(dest_dir, name, prototxt, weights, description="", labels=None, image=None,
                extra_files=None, source=None) -> dict:
    """Check and store a user's network + weights under ``dest_dir/uploaded/<id>/``.

    ``prototxt`` is the network text (str or bytes); ``weights`` a .caffemodel file path (checked,
    then moved into the store) or an object with ``save(file)`` (a werkzeug FileStorage: written
    straight into the store folder under a temporary name, checked, then renamed). The network
    must parse, the weights must be a caffemodel with blobs (its layer names are read by
    streaming, never the whole file), and at least one weighted layer must be named as in the
    network (Caffe's copy_from matches by name). Returns the entry (see :func:`list_uploads`).
    The folder is listed only once ``info.json`` is written, last.

    DIGITS' upload fields: ``labels`` (a labels file's text/bytes or a list of class names →
    labels.txt), ``image`` ({type gray|color, resize_mode, width, height}, ``check_upload_image``);
    ``extra_files`` {name: path} of ``UPLOAD_EXTRA_FILES`` (an archive's deploy net and mean image,
    copied in); ``source`` (where it came from, e.g. {"job_id", "snapshot"}) is recorded."""
    import json
    import secrets
    import shutil
    import time

    name, prototxt, net = _check_upload_network(name, prototxt)
    labels, image = check_upload_labels(labels), check_upload_image(image)
    for extra in extra_files or {}:
        if extra not in UPLOAD_EXTRA_FILES:
            raise UploadError("an upload keeps only %s besides its network and weights, not %s"
                              % (", ".join(UPLOAD_EXTRA_FILES), extra))
    from_path = not hasattr(weights, "save")
    matched = _check_upload_weights(weights, net) if from_path else None
    upload_id = "up-" + secrets.token_hex(6)
    folder = uploads_dir(dest_dir) / upload_id
    folder.mkdir(parents=True)
    try:
        if from_path:
            shutil.move(str(weights), str(folder / UPLOAD_WEIGHTS))
        else:
            part = folder / (".%s.part" % UPLOAD_WEIGHTS)
            with open(part, "wb") as out:
                weights.save(out)
            matched = _check_upload_weights(part, net)
            os.replace(part, folder / UPLOAD_WEIGHTS)
        (folder / UPLOAD_NETWORK).write_text(prototxt)
        for extra, path in (extra_files or {}).items():
            shutil.copyfile(str(path), str(folder / extra))
        if labels:
            (folder / UPLOAD_LABELS).write_text("".join("%s\n" % n for n in labels))
        info = {"id": upload_id, "name": name, "description": (description or "").strip()[:500],
                "created": time.time(), "matched": matched, "network_name": net.name or "",
                "labels": labels, "image": image, "source": source,
                "files": sorted(extra_files or {})}
        (folder / UPLOAD_INFO).write_text(json.dumps(info))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return upload_entry(dest_dir, upload_id)


def upload_entry(dest_dir, upload_id) -> dict:
    """``{id, name, description, created, matched, network_name, prototxt, weights, size}``."""
    import json
    folder = _upload_folder(dest_dir, upload_id)
    info = json.loads((folder / UPLOAD_INFO).read_text())
    weights = folder / UPLOAD_WEIGHTS
    return dict(info, id=upload_id, prototxt=str(folder / UPLOAD_NETWORK), weights=str(weights),
                size=weights.stat().st_size if weights.is_file() else None)


def list_uploads(dest_dir) -> list:
    """The uploaded pretrained models, oldest first."""
    root = uploads_dir(dest_dir)
    out = []
    if root.is_dir():
        for folder in root.iterdir():
            try:
                out.append(upload_entry(dest_dir, folder.name))
            except (KeyError, OSError, ValueError):
                continue  # not an upload (or a broken one): not listed
    return sorted(out, key=lambda e: (e.get("created") or 0, e["id"]))


def delete_upload(dest_dir, upload_id) -> None:
    import shutil
    shutil.rmtree(_upload_folder(dest_dir, upload_id))
