"""Pretrained models as a network source of the new-model form (DIGITS' "Pretrained Networks").

Two kinds live in ``DATA_DIR/pretrained`` (where ``caffeseg pretrained NAME`` downloads):

* the known public models of ``jobs.pretrained`` — each is paired with the ``prototxt/`` network
  it starts (bvlc_alexnet → fcn_alexnet after the alexnet-fcn surgery, VGG16 → fcn_8s after the
  vgg16-fcn8s surgery, fcn8s-heavy-pascal → fcn_8s as it is). For 1-channel datasets the
  weights with conv1 summed over RGB are used. A model is ready only when its (converted) file
  is on disk; otherwise the entry lists the commands that make it;
* models uploaded by users (network prototxt + caffemodel, ``DATA_DIR/pretrained/uploaded/<id>/``).

Choosing one gives the model job its network AND its weights.
"""
from __future__ import annotations

from pathlib import Path

from caffeseg.jobs import pretrained, pretrained_prepare
from caffeseg.jobs.pretrained import MAX_PROTOTXT_BYTES
from caffeseg.web.backend import BadRequest, NotFound


def folder(data_dir) -> Path:
    return Path(data_dir) / "pretrained"


def catalogue(data_dir) -> list[dict]:
    """Every pretrained model: ``{id, name, kind ('known'|'uploaded'), description, use, network,
    path, available, size, variants: {gray|rgb: {network, weights, ready, downloaded, steps}},
    preparation (``jobs.pretrained_prepare`` state or None)}`` for known models; uploaded ones have ``network`` None, ``network_name``, ``prototxt`` and
    ``weights`` and are always ready."""
    root = folder(data_dir)
    out = []
    for name, model in pretrained.KNOWN_MODELS.items():
        download = root / model.filename
        out.append({"id": name, "name": name, "kind": "known", "description": model.description,
                    "use": model.use, "network": model.network, "path": str(download),
                    "download_size": model.approx_bytes,
                    "available": download.is_file(),
                    "size": download.stat().st_size if download.is_file() else None,
                    "variants": {"gray": pretrained.network_weights(name, root, gray=True),
                                 "rgb": pretrained.network_weights(name, root, gray=False)},
                    "preparation": pretrained_prepare.read_state(root, name)})
    for entry in pretrained.list_uploads(root):
        out.append({"id": entry["id"], "name": entry["name"], "kind": "uploaded",
                    "description": entry.get("description") or "", "use": "uploaded network and weights",
                    "network": None, "network_name": entry.get("network_name") or "",
                    "prototxt": entry["prototxt"], "path": entry["weights"], "weights": entry["weights"],
                    "available": True, "size": entry["size"], "created": entry.get("created"),
                    "matched": entry.get("matched") or [], "labels": entry.get("labels"),
                    "image": entry.get("image"), "source": entry.get("source")})
    return out


def resolve(data_dir, pretrained_id, channels) -> dict:
    """The network and weights a chosen pretrained model gives a model job:
    ``{id, standard_network | network_text, weights}``. ``channels`` are the dataset's feature
    channels (1 → the gray variant of a known model). Raises NotFound for an unknown id and
    BadRequest (field ``pretrained_network``) when the weights are not made yet."""
    root = folder(data_dir)
    pretrained_id = str(pretrained_id or "")
    if pretrained_id in pretrained.KNOWN_MODELS:
        if channels is None:
            raise BadRequest("the dataset's channels are not known yet (is it still being built?); "
                             "choose a pretrained network once it is built",
                             {"pretrained_network": "the dataset's channels are not known yet"})
        gray = int(channels) == 1
        made = pretrained.network_weights(pretrained_id, root, gray=gray)
        if not made["ready"]:
            message = (f"{pretrained_id}: the {'gray' if gray else 'RGB'} weights {made['weights']} do not exist "
                       f"yet; make them on the server with: " + " && ".join(made["steps"]))
            raise BadRequest(message, {"pretrained_network": message})
        return {"id": pretrained_id, "standard_network": made["network"], "weights": made["weights"]}
    try:
        entry = pretrained.upload_entry(root, pretrained_id)
    except KeyError:
        raise NotFound(f"no pretrained model {pretrained_id!r}") from None
    prototxt = Path(entry["prototxt"])
    if not prototxt.is_file() or not Path(entry["weights"]).is_file():
        raise BadRequest(f"pretrained model {entry['name']} is incomplete (its prototxt or caffemodel is missing)",
                         {"pretrained_network": "its prototxt or caffemodel is missing"})
    return {"id": pretrained_id, "network_text": prototxt.read_text(), "weights": entry["weights"]}


def save_upload(data_dir, name, prototxt: bytes, weights_storage, description="", fields=None) -> dict:
    """Store an uploaded network + caffemodel (werkzeug FileStorage for the weights): the file is
    written once, straight into its store folder (``jobs.pretrained.save_upload``); ``fields``:
    {labels (bytes), image {type, resize_mode, width, height}} (DIGITS' upload fields)."""
    fields = fields or {}
    try:
        return pretrained.save_upload(folder(data_dir), name, prototxt, weights_storage, description,
                                      labels=fields.get("labels"), image=fields.get("image"))
    except pretrained.UploadError as exc:
        raise BadRequest(str(exc), {exc.field: str(exc)} if exc.field else None) from None


def prepare_known(data_dir, name, gray, url=None) -> dict:
    """Start preparing a known model's gray or RGB weights in the background (download, check,
    surgery); NotFound for a name that is not a known model, BadRequest when it is under way."""
    if name not in pretrained.KNOWN_MODELS:
        raise NotFound(f"no known pretrained model {name!r} (known: {', '.join(pretrained.KNOWN_MODELS)})")
    try:
        return pretrained_prepare.start(folder(data_dir), name, gray, url=url)
    except pretrained_prepare.PrepareError as exc:
        raise BadRequest(str(exc)) from None


def save_archive(data_dir, archive_storage, name=None) -> dict:
    """Store a caffeseg or DIGITS download (werkzeug FileStorage of a tar/tar.gz/zip) as an
    uploaded pretrained model (``jobs.pretrained_archive.import_archive``: safe unpacking, limits);
    the upload is written into the store's incoming folder first and removed after."""
    import tempfile
    from caffeseg.jobs import pretrained_archive
    root = folder(data_dir)
    incoming = pretrained.uploads_dir(root) / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=str(incoming), suffix=".archive") as staged:
        archive_storage.save(staged)
        staged.flush()
        try:
            return pretrained_archive.import_archive(root, staged.name, name=(name or "").strip() or None)
        except pretrained.UploadError as exc:
            raise BadRequest(str(exc), {exc.field or "archive": str(exc)}) from None


def layers(data_dir, pretrained_id) -> dict:
    """An uploaded pretrained model's layers with parameter shapes (``layer_table``)."""
    from caffeseg.jobs import pretrained_archive
    try:
        entry = pretrained.upload_entry(folder(data_dir), pretrained_id)
    except KeyError:
        raise NotFound(f"no uploaded pretrained model {pretrained_id!r}") from None
    try:
        return pretrained_archive.layer_table(entry["weights"], Path(entry["prototxt"]).read_text())
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read the layers of {entry['name']}: {exc}") from None


def layer_image(data_dir, pretrained_id, layer) -> bytes | None:
    """PNG of one layer's weights of an uploaded model (``jobs.pretrained_archive``), None when
    they are not 4-D; NotFound for an unknown model or layer."""
    from caffeseg.jobs import pretrained_archive
    try:
        entry = pretrained.upload_entry(folder(data_dir), pretrained_id)
        return pretrained_archive.layer_weight_image(entry["weights"], layer)
    except KeyError as exc:
        raise NotFound(str(exc).strip("'\"")) from None


def delete_upload(data_dir, pretrained_id) -> None:
    if pretrained_id in pretrained.KNOWN_MODELS:
        raise BadRequest(f"{pretrained_id} is a known public model; remove its files on the server "
                         f"({folder(data_dir)}) to delete it")
    try:
        pretrained.delete_upload(folder(data_dir), pretrained_id)
    except KeyError:
        raise NotFound(f"no uploaded pretrained model {pretrained_id!r}") from None


def with_network(form: dict, chosen: dict) -> dict:
    """The form's values with a chosen pretrained model as the network source: its network
    (a ``prototxt/`` network or the uploaded text) and its weights first in the pretrained list."""
    out = dict(form)
    if chosen.get("network_text"):
        out["network_source"], out["custom_network"] = "custom", chosen["network_text"]
    else:
        out["network_source"], out["standard_network"] = "standard", chosen["standard_network"]
    extra = [p for p in (form.get("pretrained_model") or []) if p != chosen["weights"]]
    out["pretrained_model"] = [chosen["weights"]] + extra
    out["pretrained_network_id"], out["pretrained_network_weights"] = chosen["id"], chosen["weights"]
    return out


VARIANTS = {"gray": True, "rgb": False}  # which weights a preparation makes: 1-channel or RGB data


def variant_is_gray(value) -> bool:
    """A preparation's ``variant`` (gray | rgb) as ``prepare_pretrained``'s ``gray``."""
    if value not in VARIANTS:
        raise BadRequest(f"variant must be one of {', '.join(VARIANTS)}, got {value!r}",
                         {"variant": "gray or rgb"})
    return VARIANTS[value]


def read_prototxt(storage) -> bytes:
    """The uploaded network's bytes, refused above 1 MiB (a network description is small)."""
    data = storage.read(MAX_PROTOTXT_BYTES + 1)
    if len(data) > MAX_PROTOTXT_BYTES:
        raise BadRequest(f"the network file is larger than {MAX_PROTOTXT_BYTES} bytes",
                         {"prototxt": "too large for a network description"})
    return data


def upload_from_form(backend, form) -> dict:
    """Store the model of a validated ``PretrainedUploadForm`` (the tab's and the API's), with
    DIGITS' labels file, image type, resize mode and size when given."""
    labels = form.labels_file.data
    fields = {"labels": labels.read(pretrained.MAX_LABELS_BYTES + 1) if labels and getattr(labels, "filename", "") else None,
              "image": {"type": form.image_type.data, "resize_mode": form.resize_mode.data,
                        "width": form.image_width.data, "height": form.image_height.data}
              if form.image_type.data else None}
    return backend.upload_pretrained(form.name.data, read_prototxt(form.prototxt.data), form.weights.data,
                                     form.description.data or "", fields)
