"""Zip member names of the clinical take-aways never come raw from the table (review finding 19):
a case, key or phase like '../x' or '/etc/x' must not give a member that extracts outside the
folder it is unpacked into (zip slip)."""
from __future__ import annotations

import io
import zipfile

import numpy as np

from caffeseg.jobs import clinical_export as cx

HOSTILE = ["../../../tmp/evil", "/etc/cron.d/x", "..", "a/../../b", "C:\\windows\\x"]


def _square_mask():
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    return mask


def _safe(member):
    parts = member.replace("\\", "/").split("/")
    return not member.startswith("/") and ".." not in parts and ":" not in member


def test_contour_zip_members_stay_inside_the_archive_for_hostile_cases_and_keys():
    rows = [{"key": "%s-k%d" % (text, i), "case": text, "image_no": None} for i, text in enumerate(HOSTILE)]
    masks = {r["key"]: _square_mask() for r in rows}
    with zipfile.ZipFile(io.BytesIO(cx.contours_zip(rows, masks))) as z:
        names = z.namelist()
    assert len(names) == len(HOSTILE)
    assert all(_safe(n) for n in names), names


def test_a_real_case_keeps_the_release_spelling():
    [(name, _)] = cx.contour_files([{"key": "00000001", "case": "SC-HF-I-1", "image_no": 48}],
                                   {"00000001": _square_mask()})
    assert name == "SC-HF-I-01/contours-auto/caffeseg/IM-0001-0048-icontour-auto.txt"


def test_seg_group_names_are_safe_for_hostile_cases_and_phases():
    rows = [{"key": str(i), "case": text, "phase": text} for i, text in enumerate(HOSTILE)]
    groups = cx.seg_groups(rows)
    assert len(groups) == len(HOSTILE)
    assert all(_safe("seg-%s.dcm" % g) for g in groups), sorted(groups)
