"""Take-away formats of an evaluation's predictions: Sunnybrook contour files and DICOM SEG.

Both read what ``jobs.evaluate.evaluate`` stored: the table (records with key, case, image_no)
and the predicted class maps in image geometry (``evaluation_masks.npz``).

* **Sunnybrook contours** (``contours_zip``): a zip laid out like the expert contour release,
  ``<CASEDIR>/contours-auto/caffeseg/IM-0001-<NNNN>-icontour-auto.txt`` (and ``ocontour`` for
  3-class models: the outline of cavity + myocardium), one "x y" line per point in pixel
  coordinates (``jobs.infer.sunnybrook_contour_text``). The outline is
  ``jobs.clinical.mask_contour`` (largest component, pixel index + 0.5), the contour the
  evaluation scored. CASEDIR spells the case as the release does (SC-HF-I-01).
* **DICOM SEG** (``dicom_seg``): a binary Segmentation (highdicom) of one record or of one
  patient's evaluated slices at one phase (ED or ES: their frames share plane positions, so each
  phase is its own SEG), one frame per source image, referencing the source MR images (their study,
  series, frame of reference and SOP instances); segment 1 = LV cavity, 2 = LV myocardium for
  3-class models. Readable with pydicom and ``highdicom.seg.segread``.
"""
import io
import os
import zipfile

import numpy as np

from caffeseg.jobs import clinical
from caffeseg.jobs.infer import sunnybrook_contour_text

AUTO_SUBDIR = "contours-auto/caffeseg"
ALGORITHM = "caffeseg"


class ExportError(ValueError):
    """What is missing for an export and what to do."""


def load_masks(path):
    """{record key: H×W uint8 class map} from an evaluation's masks file."""
    if not os.path.isfile(path):
        raise ExportError("no stored predictions (%s): evaluate the model again to export its "
                          "contours" % os.path.basename(path))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def select(table, case=None, key=None):
    """The evaluation records of one record (key), one patient (case) or all; ExportError when
    nothing matches."""
    rows = list(table.get("records") or [])
    if key is not None:
        rows = [r for r in rows if r.get("key") == key]
    if case is not None:
        rows = [r for r in rows if r.get("case") == case]
    if not rows:
        raise ExportError("no evaluated record%s%s" % (" %s" % key if key else "",
                                                       " of patient %s" % case if case else ""))
    return rows


def safe_name(text):
    """``text`` as one file-name component: letters, digits, '-', '_' and '.' kept, anything else
    '_', leading dots '_' (so never '..', '/x' or a hidden name): zip members built from a table's
    case, key or phase then always unpack inside their folder."""
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    stripped = kept.lstrip(".")
    return "_" * (len(kept) - len(stripped)) + stripped or "_"


def _case_dir(case):
    from caffeseg.plugin.sunnybrook.layout import dir_from_case
    try:
        return dir_from_case(case)
    except ValueError:
        return safe_name(case)  # not a Sunnybrook case name: kept, made safe as a folder name


def contour_files(rows, masks, classes=2):
    """[(path inside the zip, text)] of the predicted contours of ``rows``."""
    files = []
    for r in rows:
        mask = masks.get(r["key"])
        if mask is None:
            raise ExportError("record %s has no stored prediction: evaluate the model again" % r["key"])
        number = r.get("image_no")
        stem = "IM-0001-%04d" % number if isinstance(number, int) else "record-%s" % safe_name(r["key"])
        folder = "%s/%s" % (_case_dir(r.get("case") or "unknown"), AUTO_SUBDIR)
        kinds = [("icontour", mask == 1)] + ([("ocontour", mask >= 1)] if classes >= 3 else [])
        for kind, region in kinds:
            outline = clinical.mask_contour(region)
            if outline is None:
                continue  # nothing predicted: the release has no file for an undrawn contour
            files.append(("%s/%s-%s-auto.txt" % (folder, stem, kind), sunnybrook_contour_text(outline)))
    return files


def contours_zip(rows, masks, classes=2):
    """Bytes of the zip of ``contour_files``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in contour_files(rows, masks, classes):
            z.writestr(name, text)
    return buf.getvalue()


def source_image_path(info, key, stage="val"):
    """Absolute path of a record's source DICOM from dataset.json, or ExportError."""
    folder = (info.get("form_values") or {}).get("image_folder")
    rec = next((r for r in (info.get("records") or {}).get(stage) or [] if r.get("key") == key), None)
    rel = ((rec or {}).get("files") or {}).get("image")
    if not (folder and rel):
        raise ExportError("record %s: the dataset does not name its source image" % key)
    path = os.path.join(folder, rel)
    if not os.path.isfile(path):
        raise ExportError("record %s: source image %s is gone; DICOM SEG references the source "
                          "images and needs them" % (key, path))
    return path


# Patient/study attributes a SEG must carry (DICOM type 2: present, possibly empty) that
# anonymised sources often drop; highdicom copies them from the source images.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
          "StudyTime", "AccessionNumber", "ReferringPhysicianName")


def _with_type2_attributes(ds):
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def dicom_seg(rows, masks, info, classes=2, stage="val", series_number=900):
    """Bytes of a DICOM Segmentation of ``rows`` (one patient's series) referencing the sources."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    sources, frames = [], []
    for r in sorted(rows, key=lambda r: str(r["key"])):
        ds = _with_type2_attributes(pydicom.dcmread(source_image_path(info, r["key"], stage)))
        mask = masks.get(r["key"])
        if mask is None:
            raise ExportError("record %s has no stored prediction: evaluate the model again" % r["key"])
        if tuple(mask.shape) != (int(ds.Rows), int(ds.Columns)):
            raise ExportError("record %s: prediction %s does not match its image %dx%d"
                              % (r["key"], mask.shape, ds.Rows, ds.Columns))
        sources.append(ds)
        frames.append(np.where(mask <= classes - 1, mask, 0).astype(np.uint8))
    series = {str(ds.SeriesInstanceUID) for ds in sources}
    if len(series) != 1:
        raise ExportError("a DICOM SEG references one series; these records come from %d: export "
                          "one patient (or one record) at a time" % len(series))
    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM, version="1",
                                                   family=codes.DCM.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=1, segment_label="LV cavity",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.LeftVentricle,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)]
    if classes >= 3:
        segments.append(hd.seg.SegmentDescription(
            segment_number=2, segment_label="LV myocardium",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.LeftVentricleMyocardium,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(frames),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="caffeseg",
        manufacturer_model_name="caffeseg", software_versions="caffeseg",
        device_serial_number="0", omit_empty_frames=False,
        content_description="Automatic LV segmentation (caffeseg)")
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def seg_groups(rows):
    """{"<case>-<ED|ES>": rows}: one SEG per patient and phase, because a cine's ED and ES frames
    share their plane positions and a SEG's frames are told apart by position."""
    groups = {}
    for r in rows:
        phase = safe_name(r["phase"]) if r.get("phase") else "image%04d" % int(r.get("image_no") or 0)
        groups.setdefault("%s-%s" % (safe_name(r.get("case") or "unknown"), phase), []).append(r)
    return groups


def export(table, masks, info, fmt, case=None, key=None, stage="val"):
    """(file name, content type, bytes) of one take-away: fmt "contours" (zip) or "dicom-seg"
    (one .dcm when the records are one patient's phase, else a zip of one .dcm per patient and
    phase, ``seg-<case>-<ED|ES>.dcm``)."""
    classes = len(info.get("classes") or []) or 2
    rows = select(table, case=case, key=key)
    label = key or case or "all"
    safe = safe_name(label)
    if fmt == "contours":
        return "contours-%s.zip" % safe, "application/zip", contours_zip(rows, masks, classes)
    if fmt == "dicom-seg":
        groups = seg_groups(rows)
        if len(groups) == 1:
            return "seg-%s.dcm" % safe, "application/dicom", dicom_seg(rows, masks, info, classes, stage)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for group, mine in sorted(groups.items()):
                z.writestr("seg-%s.dcm" % group, dicom_seg(mine, masks, info, classes, stage))
        return "seg-%s.zip" % safe, "application/zip", buf.getvalue()
    raise ExportError("unknown export format %r: contours or dicom-seg" % fmt)
