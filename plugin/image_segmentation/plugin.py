"""DIGITS' generic Image Segmentation data plugin: a folder of feature images + a folder of label
images of the same names -> records (FCN on PASCAL VOC, KITTI road, ...).

Pairs: a feature image ``a.jpg`` goes with the label image whose name without extension is the
same (``a.png``); the folders are read at their top level. Images without a partner, or two
files of one name with different extensions, are skipped and named in the log.

Labels (``colormap_method``):

* ``label`` (DIGITS' "From label image"): label images are single-channel - a palette PNG
  (mode P: the pixel's palette index is its class, as PASCAL VOC's) or grayscale (the value is the
  class). All palette labels must share the first one's palette (DIGITS' rule), whose colours
  become the dataset's palette.
* ``textfile`` (DIGITS' "From text file"): label images are RGB; each pixel's colour must be
  exactly one colour of the colour map file (``classes.read_colormap``) and becomes that line's
  class. DIGITS quantized to the nearest colour; here an unknown colour is an error naming the
  file and pixel, because a nearest colour silently relabels anti-aliased or JPEG-damaged pixels.

Classes: names from the class labels file, else ``class 0``, ``class 1``...; their number from
the class labels file, else the colour map file, else the "Number of classes" field. A label
value outside the classes is an error naming the file, the value and a pixel, unless it is the
"Ignore label" (e.g. VOC's 255 object borders, the loss layer's ``ignore_label``).

Features (``channel_conversion``, as DIGITS): ``RGB`` and ``L`` convert with Pillow (L is
ITU-R 601 luma, ``(R*299 + G*587 + B*114) / 1000``), ``none`` keeps the file's own channels.
16-bit grayscale stays 16-bit (``L``), or is copied to 3 channels (``RGB``); Pillow would clip
it to 8 bits. Colour features are returned R, G, B (, A), as DIGITS' extension returned them.
DIGITS' builder (``create_generic_db``) then swapped them to Caffe's B, G, R; caffeseg's builder
stores the planes as given, and its web display and upload inference read 3 channels as R, G, B,
so R, G, B is the order that agrees with them (see docs/PLUGINS.md on BGR).

Splits: separate validation folders, or a seeded shuffle of the pairs with the first
floor(n x % / 100) for validation (DIGITS' ``split_image_list``).

Every image's header is checked before it is decoded (``plugin.images``: decompression bombs).
"""

import math
import os
import warnings

import numpy as np

from caffeseg.plugin import images
from caffeseg.plugin.base import (DataPlugin, EncodedRecord, Entry, EntryError, FormError, FormField,
                         Itemization, PluginError)
from caffeseg.plugin.image_segmentation import classes as class_files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
FOLDER_FIELDS = (("feature_folder", "feature image folder"), ("label_folder", "label image folder"),
                 ("validation_feature_folder", "validation feature image folder"),
                 ("validation_label_folder", "validation label image folder"))


class ImageSegmentationPlugin(DataPlugin):
    id = "image_segmentation"
    title = "Segmentation (feature + label image folders)"
    category = "Images"

    def form_fields(self):
        return [
            FormField("feature_folder", "Feature image folder", "path",
                      help="A folder of images (%s)." % " ".join(IMAGE_EXTENSIONS)),
            FormField("label_folder", "Label image folder", "path",
                      help="One label image per feature image, with the same file name except "
                           "for the extension (a.jpg -> a.png). Single-channel (palette PNG or "
                           "grayscale class indices), or RGB with a colour map file."),
            FormField("val_percent", "% for validation", "int", default=10, min=0, max=100,
                      help="Share of the pairs set apart for validation (without separate "
                           "validation folders)."),
            FormField("has_val_folder", "Separate validation images", "bool", default=False,
                      help="Take the validation set from the two folders below instead of a % split."),
            FormField("validation_feature_folder", "Validation feature image folder", "path",
                      required=False, help="Used with 'Separate validation images'."),
            FormField("validation_label_folder", "Validation label image folder", "path",
                      required=False, help="Used with 'Separate validation images'."),
            FormField("channel_conversion", "Channel conversion", "choice", default="none",
                      choices=(("RGB", "RGB"), ("L", "Grayscale"), ("none", "None (the file's own)")),
                      help="Conversion of the feature images; label images are not affected."),
            FormField("colormap_method", "Colour map specification", "choice", default="label",
                      choices=(("label", "From label image"), ("textfile", "From text file")),
                      help="'From label image': labels are palette or grayscale images whose values "
                           "are the classes. 'From text file': labels are RGB images, the colour "
                           "map file gives each class's colour."),
            FormField("colormap_text_file", "Colour map file", "file", required=False,
                      help="Line i: 'r g b' (three integers 0..255), the colour of class i-1."),
            FormField("class_labels_file", "Class labels (optional)", "file", required=False,
                      help="Line i: the name of class i-1."),
            FormField("class_count", "Number of classes", "int", required=False, min=1,
                      max=class_files.MAX_CLASSES,
                      help="Needed when neither a class labels file nor a colour map file gives it."),
            FormField("ignore_label", "Ignore label", "int", required=False, min=0, max=255,
                      help="A label value that marks pixels to leave out (PASCAL VOC: 255); allowed "
                           "besides the classes. Set the loss layer's ignore_label to the same value."),
            FormField("seed", "Random seed", "int", default=0, min=0,
                      help="Seed of the train/val shuffle, so the split is reproducible."),
            FormField("enforce_same_shape", "Enforce same shape", "bool", default=True,
                      help="Skip images whose size differs from the first record's (turn off for "
                           "PASCAL VOC's varied sizes, with batch size 1)."),
        ]

    # -- form -------------------------------------------------------------------------------

    def validate(self, values):
        """The fields, then what they name: folders holding images, the class files, the class
        count, so that a wrong input is a form error before anything is queued."""
        cleaned = DataPlugin.validate(self, values)
        errors = {}
        stages = [("feature_folder", "label_folder")]
        if cleaned["has_val_folder"]:
            stages.append(("validation_feature_folder", "validation_label_folder"))
            for name in stages[1]:
                if not cleaned.get(name):
                    errors[name] = "%s: required with 'Separate validation images'" % _label(name)
        labels = dict(FOLDER_FIELDS)
        for pair in stages:
            for name in pair:
                if name in errors:
                    continue
                problem = _folder_problem(cleaned[name], labels[name])
                if problem:
                    errors[name] = problem
            if not any(n in errors for n in pair) and \
                    os.path.realpath(cleaned[pair[0]]) == os.path.realpath(cleaned[pair[1]]):
                errors[pair[1]] = ("%s is the %s itself; give the folder of the label images"
                                   % (labels[pair[1]].capitalize(), labels[pair[0]]))
        if cleaned["colormap_method"] == "textfile" and not cleaned.get("colormap_text_file"):
            errors["colormap_text_file"] = ("Colour map file: required with 'From text file' "
                                            "(line i: 'r g b' of class i-1)")
        elif cleaned["colormap_method"] == "label" and cleaned.get("colormap_text_file"):
            errors["colormap_text_file"] = ("Colour map file: only read with colour map 'From text "
                                            "file' (RGB labels); clear it, or choose 'From text file'")
        else:
            try:
                _classes(cleaned)
            except ClassesProblem as exc:
                errors[exc.field] = exc.message
        if errors:
            raise FormError(errors)
        return cleaned

    # -- itemize ----------------------------------------------------------------------------

    def itemize(self, values):
        try:
            names, colours = _classes(values)
        except ClassesProblem as exc:
            raise PluginError(exc.message) from None
        skipped = []
        train_pairs = _pairs(values["feature_folder"], values["label_folder"], skipped)
        if not train_pairs:
            raise PluginError("no feature image in %s has a label image of the same name in %s (see "
                              "the skipped files)" % (values["feature_folder"], values["label_folder"]))
        if values.get("has_val_folder"):
            val_pairs = _pairs(values["validation_feature_folder"], values["validation_label_folder"],
                               skipped)
            if not val_pairs:
                raise PluginError("no validation feature image in %s has a label image of the same "
                                  "name in %s" % (values["validation_feature_folder"],
                                                  values["validation_label_folder"]))
            stages = {"train": train_pairs, "val": val_pairs}
            split = {"by": "folders"}
        else:
            pct, seed = int(values.get("val_percent", 10)), int(values.get("seed", 0))
            order = np.random.default_rng(seed).permutation(len(train_pairs))
            n_val = int(math.floor(len(train_pairs) * pct / 100.0))
            stages = {"val": [train_pairs[i] for i in order[:n_val]],
                      "train": [train_pairs[i] for i in order[n_val:]]}
            split = {"by": "percent", "val_percent": pct, "seed": seed}
        reference = None
        if colours is None:
            reference = _reference_palette(train_pairs[0]["label"])
        common = {"class_count": len(names), "colours": colours, "palette": reference,
                  "palette_file": train_pairs[0]["label"], "ignore_label": values.get("ignore_label")}
        entries = {}
        for stage in ("train", "val"):
            folder_kind = "validation" if stage == "val" and values.get("has_val_folder") else "train"
            entries[stage] = [Entry(stage, {"name": p["name"]},
                                    dict(p, folders=folder_kind, **common)) for p in stages[stage]]
        return Itemization(stages=entries, skipped=skipped, split=split)

    # -- encode -----------------------------------------------------------------------------

    def encode(self, entry, values):
        e = entry.payload
        feature_image = _open(e["feature"])
        label_image = _open(e["label"])
        if feature_image.size != label_image.size:
            raise EntryError("%s: label image is %d x %d pixels but its feature image %s is %d x %d"
                             % ((e["label"],) + label_image.size + (e["feature"],) + feature_image.size),
                             source=e["label"])
        feature = _feature_array(feature_image, values.get("channel_conversion") or "none", e["feature"])
        if e["colours"] is not None:
            label = _label_from_colours(label_image, e["colours"], e["label"])
        else:
            label = _label_from_indices(label_image, e, e["label"])
        _check_label_values(label, e["class_count"], e["ignore_label"], e["label"])
        if e["folders"] == "validation":
            feature_root, label_root = values["validation_feature_folder"], values["validation_label_folder"]
        else:
            feature_root, label_root = values["feature_folder"], values["label_folder"]
        meta = {"title": e["name"], "name": e["name"], "folders": e["folders"],
                "files": {"image": os.path.relpath(e["feature"], feature_root),
                          "label": os.path.relpath(e["label"], label_root)}}
        return EncodedRecord(feature=feature, label=label[np.newaxis], meta=meta)

    # -- classes ----------------------------------------------------------------------------

    def class_labels(self, values):
        return list(_classes(values)[0])

    def palette(self, values):
        names, colours = _classes(values)
        count = len(names)
        if colours is None:
            pairs = _pairs(values["feature_folder"], values["label_folder"], [])
            flat = _reference_palette(pairs[0]["label"]) if pairs else None
            if flat is not None:
                flat = list(flat) + [0] * max(0, 3 * count - len(flat))
                colours = [tuple(flat[3 * i:3 * i + 3]) for i in range(count)]
        if colours is None:
            colours = class_files.generated_palette(count)
        return [list(c) for c in colours[:count]]


class ClassesProblem(ValueError):
    def __init__(self, field, message):
        super().__init__(message)
        self.field, self.message = field, message


def _label(name):
    return dict(FOLDER_FIELDS)[name].capitalize()


def _classes(values):
    """(names, colours or None): the class names and, for 'From text file', their colours;
    ClassesProblem(field, message) when the files or the count disagree or are missing."""
    colours = names = None
    if values.get("colormap_method") == "textfile" and values.get("colormap_text_file"):
        try:
            colours = class_files.read_colormap(values["colormap_text_file"])
        except class_files.ClassFileError as exc:
            raise ClassesProblem("colormap_text_file", "Colour map file: %s" % exc) from None
    if values.get("class_labels_file"):
        try:
            names = class_files.read_class_labels(values["class_labels_file"])
        except class_files.ClassFileError as exc:
            raise ClassesProblem("class_labels_file", "Class labels: %s" % exc) from None
    count = values.get("class_count")
    if names is not None and colours is not None and len(names) != len(colours):
        raise ClassesProblem("class_labels_file", "Class labels: %s names %d classes but the colour map "
                             "file %s gives %d colours" % (values["class_labels_file"], len(names),
                                                           values["colormap_text_file"], len(colours)))
    known = len(names) if names is not None else len(colours) if colours is not None else None
    if count is not None and known is not None and int(count) != known:
        raise ClassesProblem("class_count", "Number of classes: %d, but the %s gives %d; leave it empty"
                             % (count, "class labels file" if names is not None else "colour map file", known))
    if known is None and count is None:
        raise ClassesProblem("class_count", "Number of classes: required without a class labels file "
                             "or a colour map file (labels 0..N-1 make N classes)")
    count = known if known is not None else int(count)
    if names is None:
        names = ["class %d" % i for i in range(count)]
    ignore = values.get("ignore_label")
    if ignore is not None and int(ignore) < count:
        raise ClassesProblem("ignore_label", "Ignore label: %d is one of the %d classes (0..%d); use a "
                             "value of at least %d (PASCAL VOC: 255)" % (ignore, count, count - 1, count))
    return names, colours


def _folder_problem(path, what):
    """Why ``path`` is not a readable folder with at least one image in it, or None."""
    try:
        found = _image_files(path)
    except OSError as exc:
        return "%s %s cannot be read (%s)" % (what.capitalize(), path, exc.strerror or exc)
    if not found:
        return ("%s %s holds no image (%s) at its top level"
                % (what.capitalize(), path, ", ".join(IMAGE_EXTENSIONS)))
    return None


def _image_files(folder):
    return sorted(n for n in os.listdir(folder) if not n.startswith(".")
                  and n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))


def _by_stem(folder, what, skipped):
    """({name without extension: path}, {names found with two extensions}): those are skipped."""
    found, doubles = {}, {}
    for name in _image_files(folder):
        stem = os.path.splitext(name)[0]
        if stem in found:
            doubles.setdefault(stem, [os.path.basename(found[stem])]).append(name)
        found[stem] = os.path.join(folder, name)
    for stem, names in sorted(doubles.items()):
        del found[stem]
        skipped.append({"file": os.path.join(folder, names[0]),
                        "message": "%s: %s %s holds %s: which one is meant is unclear; keep one"
                                   % (os.path.join(folder, names[0]), what, folder, " and ".join(names))})
    return found, set(doubles)


def _pairs(feature_folder, label_folder, skipped):
    """[{"name", "feature", "label"}] sorted by name; images without a partner go to ``skipped``."""
    try:
        features, unclear = _by_stem(feature_folder, "feature image folder", skipped)
        labels, unclear_labels = _by_stem(label_folder, "label image folder", skipped)
    except OSError as exc:
        raise PluginError("cannot list %s (%s)" % (exc.filename, exc.strerror or exc)) from None
    for stem in sorted(set(features) - set(labels) - unclear_labels):
        skipped.append({"file": features[stem], "message": "%s: no label image %s.* in %s"
                        % (features[stem], stem, label_folder)})
    for stem in sorted(set(labels) - set(features) - unclear):
        skipped.append({"file": labels[stem], "message": "%s: no feature image %s.* in %s"
                        % (labels[stem], stem, feature_folder)})
    return [{"name": stem, "feature": features[stem], "label": labels[stem]}
            for stem in sorted(set(features) & set(labels))]


def _open(path):
    """The decoded Pillow image, its size checked from the header first; EntryError naming it."""
    from PIL import Image
    try:
        images.check_image_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            image = Image.open(path)
            image.load()
        return image
    except (images.ImageTooLarge, images.UnreadableImage) as exc:
        raise EntryError(str(exc), source=path) from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for damaged files
        raise EntryError("%s: cannot decode the image (%s)" % (path, exc), source=path) from None


def _reference_palette(label_path):
    """The first label image's palette (a flat list r, g, b, ...) or None for grayscale labels;
    PluginError naming the file when it cannot be read (the whole dataset depends on it)."""
    from PIL import Image
    try:
        images.check_image_file(label_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(label_path) as image:  # the palette is in the header
                return list(image.getpalette() or []) if image.mode == "P" else None
    except (images.ImageTooLarge, images.UnreadableImage) as exc:
        raise PluginError(str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PluginError("%s: cannot read the label image's palette (%s)" % (label_path, exc)) from None


def _sixteen_bit(image, path):
    arr = np.asarray(image)
    if arr.dtype != np.uint16:
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise EntryError("%s: %s values outside 0..65535" % (path, image.mode), source=path)
        arr = arr.astype(np.uint16)
    return arr


def _feature_array(image, conversion, path):
    """C x H x W feature: 1 channel, or 3/4 in R, G, B(, A) order (module notes)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        plane = _sixteen_bit(image, path)
        return np.repeat(plane[np.newaxis], 3, axis=0) if conversion == "RGB" else plane[np.newaxis]
    if conversion in ("RGB", "L"):
        image = image.convert(conversion) if mode != conversion else image
    elif mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode not in ("L", "RGB", "RGBA"):
        raise EntryError("%s: an image in mode %s cannot be stored as it is; choose channel conversion RGB or "
                         "Grayscale" % (path, mode), source=path)
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr[np.newaxis].copy()
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _label_from_indices(image, e, path):
    """H x W class indices of a palette or grayscale label image (colour map 'From label image')."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        arr = _sixteen_bit(image, path)
        if arr.size and arr.max() > 255:
            raise EntryError("%s: label value %d; labels are 8-bit class indices (0..255)"
                             % (path, int(arr.max())), source=path)
        arr = arr.astype(np.uint8)
    elif mode not in ("P", "L", "1"):
        raise EntryError("%s: a label image in mode %s; labels must be single-channel (palette or grayscale "
                         "class indices), or choose colour map 'From text file' for RGB labels"
                         % (path, mode), source=path)
    else:
        arr = np.asarray(image).astype(np.uint8)
    reference = e.get("palette")
    if reference is not None:
        if mode != "P":
            raise EntryError("%s: a grayscale label image among palette ones (%s is a palette PNG); "
                             "all label images must use the same palette" % (path, e["palette_file"]),
                             source=path)
        count = 3 * e["class_count"]
        mine = list(image.getpalette() or [])
        mine, ref = (p[:count] + [0] * max(0, count - len(p)) for p in (mine, list(reference)))
        if mine != ref:
            k = next(i for i in range(count) if mine[i] != ref[i]) // 3
            raise EntryError("%s: its palette differs from %s's at class %d (%s here, %s there); all "
                             "label images must use the same palette"
                             % (path, e["palette_file"], k, tuple(mine[3 * k:3 * k + 3]),
                                tuple(ref[3 * k:3 * k + 3])), source=path)
    return arr


def _label_from_colours(image, colours, path):
    """H x W class indices of an RGB label image: each colour must be one of ``colours``."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "RGBA":
        alpha = np.asarray(image)[:, :, 3]
        if alpha.size and alpha.min() < 255:
            raise EntryError("%s: transparent pixels in an RGB label image; every pixel needs its "
                             "class colour" % path, source=path)
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise EntryError("%s: a label image in mode %s; with a colour map file labels are RGB images"
                         % (path, image.mode), source=path)
    rgb = np.asarray(image).astype(np.int32)
    packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.int32)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, packed), 0, len(keys) - 1)
    unknown = sorted_keys[pos] != packed
    if unknown.any():
        y, x = (int(v[0]) for v in np.nonzero(unknown))
        raise EntryError("%s: %d pixel(s) have a colour that is not in the colour map file, e.g. %s at "
                         "x=%d, y=%d" % (path, int(unknown.sum()), tuple(int(v) for v in rgb[y, x]), x, y),
                         source=path)
    return order[pos].astype(np.uint8)


def _check_label_values(label, class_count, ignore_label, path):
    bad = label >= class_count
    if ignore_label is not None:
        bad &= label != ignore_label
    if bad.any():
        y, x = (int(v[0]) for v in np.nonzero(bad))
        raise EntryError("%s: label value %d at x=%d, y=%d is outside the %d classes (0..%d)%s"
                         % (path, int(label[y, x]), x, y, class_count, class_count - 1,
                            "" if ignore_label is not None else
                            "; if it marks pixels to leave out (PASCAL VOC's 255 borders), set "
                            "'Ignore label' to it"), source=path)
