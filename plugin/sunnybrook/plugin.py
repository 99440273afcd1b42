"""The Sunnybrook data plugin: LV Segmentation Challenge DICOMs + expert contours -> records.

Entries are contoured images. "inner" (2 classes) uses every image with an inner contour;
"inner_outer" (3 classes: background / LV cavity / myocardium) uses images that have both an
inner and an outer contour (the release draws outer contours at end-diastole only).

Splits: by slice (as DIGITS did: shuffle every entry, the first floor(n * pct / 100) go to
validation) or by patient (shuffle the cases and move whole cases into validation until it
holds at least that many entries), both from a seeded generator so a split is reproducible.
"""

import math
import os

import numpy as np

from caffeseg.plugin.base import (DataPlugin, EncodedRecord, Entry, EntryError, FormError, FormField,
                         Itemization, PluginError)
from caffeseg.plugin.sunnybrook import contours, dicom, layout

CLASS_LABELS = {"inner": ["background", "LV cavity"],
                "inner_outer": ["background", "LV cavity", "myocardium"]}
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 200, 0)]


class SunnybrookPlugin(DataPlugin):
    id = "sunnybrook"
    title = "Sunnybrook LV Segmentation"

    def form_fields(self):
        return [
            FormField("image_folder", "Image folder", "path",
                      help="Folder with one sub-folder per case holding the DICOM slices, e.g. "
                           ".../challenge_training (SC-HF-I-1/IM-0004-0048.dcm)."),
            FormField("contour_folder", "Contour folder", "path",
                      help="Folder with the expert contours, searched recursively for "
                           "<CASE>/contours-manual/IRCCI-expert/IM-0001-NNNN-icontour-manual.txt."),
            FormField("channel_conversion", "Channel conversion", "choice", default="L",
                      choices=(("L", "Grayscale (1 channel)"),
                               ("RGB", "RGB (the slice copied to 3 channels)")),
                      help="Grayscale stores 1 x H x W; RGB repeats the plane into 3 channels "
                           "for networks pretrained on colour images."),
            # 100 % would leave nothing to train on: refused with the other range checks
            FormField("val_percent", "% for validation", "int", default=10, min=0, max=99,
                      help="Share of entries (or of patients' entries) held out for validation "
                           "(0-99; 100 would leave no training record)."),
            FormField("contour_type", "Contour type", "choice", default="inner",
                      choices=(("inner", "Inner: LV cavity (2 classes)"),
                               ("inner_outer", "Inner + outer: cavity and myocardium (3 classes)")),
                      help="Inner uses endocardial contours; inner+outer also fills the "
                           "epicardial contour as myocardium (images with both contours only)."),
            FormField("split_by", "Split by", "choice", default="patient",
                      choices=(("patient", "Patient (no patient in both train and val)"),
                               ("slice", "Slice (as DIGITS)")),
                      help="Patient-level splits measure generalisation to new patients and give "
                           "whole patients for the per-patient volumes and EF of an evaluation; "
                           "slice-level splits (DIGITS) leak a patient's anatomy into validation."),
            FormField("seed", "Random seed", "int", default=0, min=0,
                      help="Seed of the train/val shuffle, so the split is reproducible."),
            FormField("enforce_same_shape", "Enforce same shape", "bool", default=True,
                      help="Skip images whose shape differs from the first record's."),
        ]

    def class_labels(self, values):
        return list(CLASS_LABELS[(values or {}).get("contour_type") or "inner"])

    def palette(self, values):
        return [list(c) for c in PALETTE[:len(self.class_labels(values))]]

    def inference_form(self):
        return {"kind": "dataset_record", "stage": "val",
                "record_label": "record {case} / image {image_no:04d}",
                "help": "Pick a slice of the validation set, e.g. record SC-HF-NI-3 / image 0048."}

    # -- itemize --------------------------------------------------------------------------

    def validate(self, values):
        """The fields, then the two folders' layout, so that a wrong or swapped folder is a
        form error before anything is queued (not a failed build)."""
        cleaned = DataPlugin.validate(self, values)
        errors, _ = _check_layout(cleaned["image_folder"], cleaned["contour_folder"])
        if errors:
            raise FormError(errors)
        return cleaned

    def itemize(self, values):
        image_folder, contour_folder = values["image_folder"], values["contour_folder"]
        errors, case_dirs = _check_layout(image_folder, contour_folder)
        if errors:
            raise PluginError("; ".join(errors.values()))
        want_outer = values.get("contour_type") == "inner_outer"
        entries, skipped, seen, warnings = [], [], {}, []
        for case, case_dir in case_dirs:
            expert = os.path.join(case_dir, layout.EXPERT_SUBDIR)
            if case in seen:
                skipped.append({"file": case_dir, "message": "%s: case %s already read from %s; "
                                "this copy is ignored" % (case_dir, case, seen[case])})
                continue
            seen[case] = case_dir
            if case not in layout.SAX_SERIES:
                skipped.append({"file": case_dir, "message": "%s: case %s is not one of the 15 "
                                "challenge cases (its SAX series is unknown)" % (case_dir, case)})
                continue
            by_image = {}
            for name in sorted(os.listdir(expert)):
                parsed = layout.parse_contour_name(name)
                if parsed is None:
                    continue
                by_image.setdefault(parsed[0], {})[parsed[1]] = os.path.join(expert, name)
            phases, warning = _cardiac_phases(case, by_image)
            if warning:
                warnings.append(warning)
            for image_no in sorted(by_image):
                files = by_image[image_no]
                if "icontour" not in files:
                    if want_outer and "ocontour" in files:
                        skipped.append({"file": files["ocontour"], "message":
                                        "%s: outer contour without an inner contour"
                                        % files["ocontour"]})
                    continue
                if want_outer and "ocontour" not in files:
                    continue  # an ES slice: inner+outer uses ED slices with both contours
                img = layout.image_path(image_folder, case, image_no)
                if not os.path.isfile(img):
                    skipped.append({"file": files["icontour"], "message":
                                    "%s: no matching image %s" % (files["icontour"], img)})
                    continue
                entries.append({"case": case, "image_no": image_no, "image": img,
                                "icontour": files["icontour"], "phase": phases[image_no],
                                "slice_index": (image_no - 1) // layout.PHASES_PER_SLICE,
                                "phase_index": (image_no - 1) % layout.PHASES_PER_SLICE,
                                "ocontour": files.get("ocontour") if want_outer else None})
        if not entries:
            raise PluginError("no usable contoured image: %d contour(s) in %s had no matching "
                              "image in %s" % (len(skipped), contour_folder, image_folder))
        stages, split = self._split(entries, values)
        return Itemization(
            stages={stage: [Entry(stage, {"case": e["case"], "image_no": e["image_no"]}, e)
                            for e in items] for stage, items in stages.items()},
            skipped=skipped, split=split, warnings=warnings)

    def _split(self, entries, values):
        pct = int(values.get("val_percent", 10))
        seed = int(values.get("seed", 0))
        rng = np.random.default_rng(seed)
        n_val = int(math.floor(len(entries) * pct / 100.0))
        if values.get("split_by") == "patient":
            cases = sorted({e["case"] for e in entries})
            order = [cases[i] for i in rng.permutation(len(cases))]
            val_cases = []
            count = 0
            for case in order:
                if count >= n_val or len(val_cases) == len(cases) - 1:
                    break
                val_cases.append(case)
                count += sum(1 for e in entries if e["case"] == case)
            val = [e for e in entries if e["case"] in val_cases]
            train = [e for e in entries if e["case"] not in val_cases]
            train = [train[i] for i in rng.permutation(len(train))]
            split = {"by": "patient", "val_cases": sorted(val_cases),
                     "train_cases": sorted(set(cases) - set(val_cases))}
        else:
            perm = rng.permutation(len(entries))
            val = [entries[i] for i in perm[:n_val]]
            train = [entries[i] for i in perm[n_val:]]
            by_stage = {stage: {e["case"] for e in items} for stage, items in (("train", train), ("val", val))}
            # A patient on both sides leaks its anatomy into validation and has partial volumes.
            split = {"by": "slice", "cases_in_both": sorted(by_stage["train"] & by_stage["val"])}
        split.update({"seed": seed, "val_percent": pct})
        return {"train": train, "val": val}, split

    # -- encode ---------------------------------------------------------------------------

    def encode(self, entry, values):
        e = entry.payload
        sl = dicom.read_slice(e["image"])
        pixels = sl.pixels
        if pixels.ndim != 2:
            raise EntryError("%s: expected a single-channel slice, got shape %s"
                             % (e["image"], pixels.shape), source=e["image"])
        shape = pixels.shape
        label = np.zeros(shape, dtype=np.uint8)
        inner = contours.read_contour(e["icontour"])
        contours.check_inside(inner, shape, e["icontour"])
        files = {"image": os.path.relpath(e["image"], values["image_folder"]),
                 "icontour": os.path.relpath(e["icontour"], values["contour_folder"])}
        if e.get("ocontour"):
            outer = contours.read_contour(e["ocontour"])
            contours.check_inside(outer, shape, e["ocontour"])
            contours.fill_polygon(label, outer, 2)
            files["ocontour"] = os.path.relpath(e["ocontour"], values["contour_folder"])
        contours.fill_polygon(label, inner, 1)
        feature = pixels[np.newaxis]
        if values.get("channel_conversion") == "RGB":
            feature = np.repeat(feature, 3, axis=0)
        meta = {"case": e["case"], "image_no": e["image_no"],
                "title": "record %s / image %04d" % (e["case"], e["image_no"]), "files": files,
                "pixel_spacing": list(sl.pixel_spacing) if sl.pixel_spacing else None,
                "phase": e.get("phase"), "slice_index": e.get("slice_index"),
                "phase_index": e.get("phase_index")}
        for name in ("slice_location", "trigger_time", "slice_thickness", "spacing_between_slices",
                     "image_position", "image_orientation", "patient_id", "series_uid", "sop_uid"):
            meta[name] = sl.meta.get(name)
        if meta["slice_location"] is None and meta["image_position"] and meta["image_orientation"]:
            # No SliceLocation: the position along the slice normal (row × column direction).
            o = np.asarray(meta["image_orientation"], dtype=np.float64)
            meta["slice_location"] = float(np.dot(np.cross(o[:3], o[3:]), meta["image_position"]))
        return EncodedRecord(feature=feature, label=label[np.newaxis], meta=meta)


def _cardiac_phases(case, by_image):
    """({image number: "ED" | "ES" | None} for one case's contoured images, warning or None).

    The release numbers images slice × 20 + phase + 1 (``layout.PHASES_PER_SLICE``); the experts
    contoured two phases per case and drew outer (epicardial) contours at end-diastole only, so
    ED is the contoured phase holding outer contours. Without them (or with them at several
    phases) ED is the earliest contoured phase (the R wave triggers the cine: phase 0 in the
    release). ES is the latest other contoured phase; any further phase is None. When the
    outer contours are not at the earliest phase, the two rules disagree: the warning says so."""
    phase_of = {n: (n - 1) % layout.PHASES_PER_SLICE for n, files in by_image.items()
                if "icontour" in files}
    if not phase_of:
        return {n: None for n in by_image}, None
    earliest = min(phase_of.values())
    outer = sorted({phase_of[n] for n, files in by_image.items() if "ocontour" in files and n in phase_of})
    ed, warning = earliest, None
    if len(outer) == 1:
        ed = outer[0]
        if ed != earliest:
            warning = ("case %s: the outer contours are at phase %d, not at the earliest contoured "
                       "phase %d; phase %d is taken as end-diastole (outer contours are drawn at ED), "
                       "phase %d as end-systole: check the case's contours if that is wrong"
                       % (case, ed, earliest, ed, max(p for p in phase_of.values() if p != ed)))
    elif len(outer) > 1:
        warning = ("case %s: outer contours at %d phases (%s), drawn at end-diastole only in the "
                   "release; the earliest contoured phase %d is taken as end-diastole"
                   % (case, len(outer), ", ".join(map(str, outer)), earliest))
    others = [p for p in phase_of.values() if p != ed]
    es = max(others) if others else None
    return {n: ("ED" if phase_of.get(n) == ed else "ES" if es is not None and phase_of.get(n) == es else None)
            for n in by_image}, warning


def _folder_problem(path, what):
    """Why ``path`` cannot be read as a folder with something in it, or None."""
    try:
        names = [n for n in os.listdir(path) if not n.startswith(".")]
    except OSError as exc:
        return "%s %s cannot be read (%s)" % (what, path, exc.strerror)
    if not names:
        return "%s %s is empty" % (what, path)
    return None


def _image_cases(folder):
    return [c for c in layout.CASES if os.path.isdir(os.path.join(folder, c))]


def _check_layout(image_folder, contour_folder):
    """({field: message}, contour case folders): the errors of folders that are not a Sunnybrook
    image / contour release, naming the likely mistake (the two folders swapped, the release's
    parent folder), and the case folders found, so that the tree is walked once."""
    errors = {}
    for field, folder, what in (("image_folder", image_folder, "image folder"),
                                ("contour_folder", contour_folder, "contour folder")):
        problem = _folder_problem(folder, what)
        if problem:
            errors[field] = problem
    if errors:
        return errors, []
    swapped = "; the image and contour folders look swapped"
    case_dirs = layout.find_contour_dirs(contour_folder)
    if not case_dirs:
        hint = swapped if _image_cases(contour_folder) else ""
        errors["contour_folder"] = (
            "contour folder %s is not a Sunnybrook contour release: no case folder like "
            "SC-HF-I-01/contours-manual/IRCCI-expert found under it%s" % (contour_folder, hint))
    if not _image_cases(image_folder):
        hint = ""
        nested = os.path.join(image_folder, "challenge_training")
        if os.path.isdir(nested):
            hint = "; did you mean %s?" % nested
        elif "contour_folder" in errors and errors["contour_folder"].endswith(swapped):
            hint = swapped
        errors["image_folder"] = (
            "image folder %s is not a Sunnybrook image release: none of the case folders "
            "(%s, ...) is in it%s" % (image_folder, ", ".join(layout.CASES[:3]), hint))
    return errors, case_dirs
