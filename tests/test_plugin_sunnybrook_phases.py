"""Which contoured phase of a Sunnybrook case is end-diastole (review finding 15): the release
draws outer (epicardial) contours at ED only, so the phase holding them is ED; without them the
earliest contoured phase is; when the two rules disagree the build says so."""
from __future__ import annotations

import os
import shutil

import pytest

from caffeseg.jobs.dataset import build_dataset
from caffeseg.plugin.sunnybrook import SunnybrookPlugin, layout, phantom


def _image(slice_index, phase):
    return slice_index * layout.PHASES_PER_SLICE + phase + 1


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("release"))
    phantom.generate(out, cases=["SC-HF-I-1", "SC-N-2"], seed=3, slices=2)
    return out


def _form(root):
    return {"image_folder": os.path.join(root, "challenge_training"),
            "contour_folder": os.path.join(root, "TrainingDataContours"), "val_percent": 0}


def _expert(root, case_dir):
    return os.path.join(root, "TrainingDataContours", case_dir, "contours-manual", "IRCCI-expert")


def _phases_of(items):
    return {(e.payload["case"], e.payload["image_no"]): e.payload["phase"]
            for entries in items.stages.values() for e in entries}


def _move_outer_contours_to_es(root, case_dir):
    """The outer contours of the case drawn at its ES images instead (e.g. a cine whose
    trigger starts at end-systole): phase 0 then holds inner contours only."""
    expert = _expert(root, case_dir)
    names = sorted(os.listdir(expert))
    inner = sorted(layout.parse_contour_name(n)[0] for n in names if n.endswith("-icontour-manual.txt"))
    es_phase = max((n - 1) % layout.PHASES_PER_SLICE for n in inner)
    for name in names:
        parsed = layout.parse_contour_name(name)
        if parsed and parsed[1] in ("ocontour", "p1contour", "p2contour"):
            es_image = _image((parsed[0] - 1) // layout.PHASES_PER_SLICE, es_phase)
            os.replace(os.path.join(expert, name), os.path.join(expert, layout.contour_name(es_image, parsed[1])))
    return es_phase


def test_the_phase_with_outer_contours_is_end_diastole_and_the_disagreement_is_said(release, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(release, root)
    es_phase = _move_outer_contours_to_es(root, "SC-HF-I-01")
    plugin = SunnybrookPlugin()
    items = plugin.itemize(plugin.validate(_form(root)))
    phases = _phases_of(items)
    for k in range(2):
        assert phases[("SC-HF-I-1", _image(k, es_phase))] == "ED"  # it holds the outer contours
        assert phases[("SC-HF-I-1", _image(k, 0))] == "ES"
    # the other case keeps the release's layout: both rules agree, nothing is said of it
    assert {phases[("SC-N-2", _image(k, 0))] for k in range(2)} == {"ED"}
    [warning] = items.warnings
    assert "SC-HF-I-1" in warning and "outer contours" in warning and "earliest" in warning
    out = build_dataset(plugin, plugin.validate(_form(root)), str(tmp_path / "ds"))
    assert out["warnings"] == [warning]
    with open(os.path.join(str(tmp_path / "ds"), "build.log")) as log:
        assert "warning: " + warning in log.read()


def test_without_outer_contours_the_earliest_phase_is_end_diastole(release, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(release, root)
    expert = _expert(root, "SC-N-02")
    for name in os.listdir(expert):
        if not name.endswith("-icontour-manual.txt"):
            os.remove(os.path.join(expert, name))
    plugin = SunnybrookPlugin()
    items = plugin.itemize(plugin.validate(_form(root)))
    phases = _phases_of(items)
    assert {phases[("SC-N-2", _image(k, 0))] for k in range(2)} == {"ED"}
    assert "ES" in {p for (case, _), p in phases.items() if case == "SC-N-2"}
    assert items.warnings == []
