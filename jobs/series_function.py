"""LV area and function of uploaded DICOM images (the inference page's clinical read-out).

Per image: the predicted LV area in mm² (``jobs.clinical``: the traced outline's polygon area ×
PixelSpacing). For several images of one series: group them by cardiac phase (the phase index
(InstanceNumber − 1) mod CardiacNumberOfImages when both are in the headers, else the
TriggerTime to 1 ms), sum discs per phase (``jobs.clinical.disc_volume_ml`` with its gap rule;
spacing from the slice positions), and take **ED = the phase with the largest volume, ES = the
one with the smallest** (no expert contour names them here), EF = (EDV − ESV) / EDV.
"""
import numpy as np

from caffeseg.jobs import clinical


def image_reading(class_map, header, lv_class=1):
    """{"lv_area_mm2", "slice_location", "phase_key", "series_uid", "patient_id"} of one predicted
    DICOM image; header = plugin.sunnybrook.dicom.read_header's (spacing, meta)."""
    spacing, meta = header
    outline = clinical.mask_contour(np.asarray(class_map) == lv_class)
    area = None
    if spacing is not None:
        area = clinical.contour_area_mm2(outline, spacing) if outline is not None else 0.0
    return {"lv_area_mm2": area, "pixel_spacing": list(spacing) if spacing else None,
            "slice_location": meta.get("slice_location"), "phase_key": _phase_key(meta),
            "series_uid": meta.get("series_uid"), "patient_id": meta.get("patient_id"),
            "trigger_time": meta.get("trigger_time")}


def _phase_key(meta):
    n, count = meta.get("instance_number"), meta.get("cardiac_images")
    if n is not None and count:
        return "phase %d" % ((int(n) - 1) % int(count))
    if meta.get("trigger_time") is not None:
        return "trigger %.0f ms" % meta["trigger_time"]
    return None


def series_function(readings):
    """Volumes and EF of the readings of one upload, or {"why_not": reason} when they are not
    one series with slice positions and spacing at two phases or more."""
    usable = [r for r in readings if r.get("lv_area_mm2") is not None]
    if len(usable) < 2:
        return {"why_not": "volumes need several DICOM slices with PixelSpacing (one series at ED and ES)"}
    series = {r.get("series_uid") for r in usable}
    if len(series) > 1:
        return {"why_not": "the images come from %d series; upload one patient's short-axis series" % len(series)}
    if any(r.get("slice_location") is None or r.get("phase_key") is None for r in usable):
        return {"why_not": "some images have no slice position or cardiac phase in their headers"}
    spacing = clinical.slice_spacing(r["slice_location"] for r in usable)
    if spacing is None:
        return {"why_not": "all images are at one slice position: a volume needs several"}
    phases = {}
    for r in usable:
        phases.setdefault(r["phase_key"], []).append((r["slice_location"], r["lv_area_mm2"]))
    if len(phases) < 2:
        return {"why_not": "all images are at one cardiac phase: EF needs ED and ES"}
    volumes = {}
    for key, slices in phases.items():
        locations = [loc for loc, _ in slices]
        if len(set(np.round(locations, 2))) != len(locations):
            return {"why_not": "%s has two images at one slice position" % key}
        volumes[key] = clinical.disc_volume_ml(slices, spacing)
    ed = max(volumes, key=lambda k: volumes[k][0])
    es = min(volumes, key=lambda k: volumes[k][0])
    edv, esv = volumes[ed][0], volumes[es][0]
    return {"spacing_mm": spacing, "ed_phase": ed, "es_phase": es,
            "slices": {ed: len(phases[ed]), es: len(phases[es])},
            "gaps": {ed: volumes[ed][1], es: volumes[es][1]},
            "phases": {k: v[0] for k, v in sorted(volumes.items())},
            "edv_ml": edv, "esv_ml": esv, "sv_ml": edv - esv,
            "ef_percent": 100.0 * (edv - esv) / edv if edv > 0 else None}


class SeriesError(ValueError):
    """An upload that cannot be read as a series (what and why)."""


MAX_MEMBERS = 2000
MAX_MEMBER_BYTES = 64 * 1024 * 1024


def series_files(path, work_dir):
    """The files of an upload: a folder's files (not recursive, sorted), one file, or a zip's
    members extracted flat into ``work_dir`` (names reduced to their base name, so no member
    writes outside it; at most MAX_MEMBERS members of MAX_MEMBER_BYTES each)."""
    import os
    import zipfile
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in sorted(os.listdir(path))
                if not n.startswith(".") and os.path.isfile(os.path.join(path, n))]
    if not zipfile.is_zipfile(path):
        return [path]
    out = []
    with zipfile.ZipFile(path) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        if len(members) > MAX_MEMBERS:
            raise SeriesError("%s: %d files in the zip, at most %d" % (path, len(members), MAX_MEMBERS))
        for i, m in enumerate(members):
            base = os.path.basename(m.filename.replace("\\", "/"))
            if not base or base.startswith("."):
                continue
            if m.file_size > MAX_MEMBER_BYTES:
                raise SeriesError("%s: member %s is %d bytes, at most %d"
                                  % (path, m.filename, m.file_size, MAX_MEMBER_BYTES))
            target = os.path.join(work_dir, "%04d_%s" % (i, base))
            with z.open(m) as src, open(target, "wb") as dst:
                # read at most the limit + 1 byte: a member lying about its size is caught too
                data = src.read(MAX_MEMBER_BYTES + 1)
                if len(data) > MAX_MEMBER_BYTES:
                    raise SeriesError("%s: member %s is larger than %d bytes" % (path, m.filename, MAX_MEMBER_BYTES))
                dst.write(data)
            out.append(target)
    return out
