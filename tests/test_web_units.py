"""Path safety, percentile windowing and plugin field reading."""
from __future__ import annotations

import os

import numpy as np
import pytest

from caffeseg.web import imaging
from caffeseg.web.safety import UnsafePath, check_job_id, complete_path, job_file, within


def test_job_ids():
    assert check_job_id("20260101-120000-ab12") == "20260101-120000-ab12"
    for bad in ("", "..", "a/b", "a.b", "-x", "x" * 65, "a b", None):
        with pytest.raises(UnsafePath):
            check_job_id(bad)


def test_within_roots_resolves_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    assert within(root / "sub", [str(root)]) == (root / "sub").resolve()
    for bad in (root / "link", root / ".." / "outside", "/etc", tmp_path / "rootx"):
        with pytest.raises(UnsafePath):
            within(bad, [str(root)])


def test_job_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert job_file(tmp_path, "a.txt") == (tmp_path / "a.txt").resolve()
    for bad in ("../a.txt", ".hidden", "a/../../b", ""):
        with pytest.raises(UnsafePath):
            job_file(tmp_path, bad)


def test_complete_path(tmp_path):
    (tmp_path / "cases").mkdir()
    (tmp_path / "contours").mkdir()
    (tmp_path / "notes.txt").write_text("")
    roots = [str(tmp_path)]
    assert complete_path(str(tmp_path) + "/c", roots) == [str(tmp_path / "cases") + "/", str(tmp_path / "contours") + "/"]
    assert complete_path(str(tmp_path) + "/n", roots) == [str(tmp_path / "notes.txt")]
    assert complete_path("/etc/", roots) == []


def test_percentile_window_ignores_outliers():
    img = np.full((20, 20), 100, np.uint16)
    img[2:8, 2:8] = 1100
    img[0, 0] = 65535
    out = imaging.window(img, 1, 99)
    assert out.dtype == np.uint8
    assert out[5, 5] == 255 and out[19, 19] == 0
    # A plain min–max stretch would have put the disc at 1000/65435*255 ≈ 4.
    flat = imaging.window(np.zeros((4, 4)))
    assert flat.max() == 0


def test_colorize_uses_palette_then_defaults():
    lab = np.array([[0, 1, 2]], np.uint8)
    rgb = imaging.colorize(lab, [[1, 2, 3], [4, 5, 6]])
    assert rgb[0, 0].tolist() == [1, 2, 3] and rgb[0, 1].tolist() == [4, 5, 6]
    assert rgb[0, 2].tolist() == list(imaging.DEFAULT_PALETTE[2])


def test_to_display_shapes():
    assert imaging.to_display(np.zeros((1, 4, 5))).shape == (4, 5)
    assert imaging.to_display(np.zeros((3, 4, 5))).shape == (4, 5, 3)


def test_config_is_one_dict_of_the_documented_keys(tmp_path, monkeypatch):
    from caffeseg.web.config import resolve
    monkeypatch.delenv("CAFFESEG_DATA_DIR", raising=False)
    assert resolve({"DATA_DIR": str(tmp_path)})["JOBS_DIR"] == str(tmp_path.resolve() / "jobs")
    with pytest.raises(TypeError, match="config is a dict"):
        resolve(str(tmp_path))  # no guessing what a bare path or an object means
    monkeypatch.setenv("CAFFESEG_ALLOW_PYTHON_LAYER_UPLOAD", "false")
    monkeypatch.setenv("CAFFESEG_DATA_ROOTS", f"{tmp_path}:/srv/data")
    settings = resolve({"DATA_DIR": str(tmp_path)})
    assert settings["ALLOW_PYTHON_LAYER_UPLOAD"] is False and settings["DATA_ROOTS"][1] == "/srv/data"


def test_the_installed_sunnybrook_plugin_builds_the_dataset_form():
    from caffeseg.plugin.base import discover_plugins
    from caffeseg.web.forms import GENERIC_DATASET_FIELDS, dataset_form_class
    sunny = discover_plugins().plugins["sunnybrook"]
    fields = sunny.form_fields()
    assert [f.name for f in fields[:2]] == ["image_folder", "contour_folder"]
    assert all(f.help for f in fields)
    form_cls = dataset_form_class(sunny)
    assert form_cls.plugin_field_names[:2] == ["image_folder", "contour_folder"]
    # A plugin field that shares a generic field's name is shown once, as the generic field.
    assert "enforce_same_shape" in [f.name for f in fields]
    assert not set(form_cls.plugin_field_names) & set(GENERIC_DATASET_FIELDS)


def test_a_broken_plugin_is_listed_and_hides_nothing(tmp_path, monkeypatch):
    """A third-party entry point that fails to import and one that lacks a contract method are
    both shown as broken in the New Dataset menu; Sunnybrook stays offered; asking for a broken
    one names its error."""
    import importlib.metadata
    from caffeseg.plugin import base
    from caffeseg.web import create_app
    from test_web_fakes import FakeBackend

    class Incomplete(base.DataPlugin):  # no encode(), class_labels(), palette(): cannot be built
        id, title = "incomplete", "Incomplete"

        def form_fields(self):
            return []

        def itemize(self, values):
            return base.Itemization(stages={})

    class EntryPoint:
        def __init__(self, name, value, load):
            self.name, self.value, self.load = name, value, load

    def fails_to_import():
        raise ImportError("No module named 'caffeseg_missing'")

    points = [EntryPoint("missing", "caffeseg_missing:Plugin", fails_to_import),
              EntryPoint("incomplete", "tests:Incomplete", lambda: Incomplete)]
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: points + list(real(group=group)) if group == base.ENTRY_POINT_GROUP else real(group=group))
    found = base.discover_plugins()
    assert "sunnybrook" in found.plugins
    assert {b.name: b.error.split(":")[0] for b in found.broken} == {"missing": "ImportError", "incomplete": "TypeError"}
    assert "abstract" in [b for b in found.broken if b.name == "incomplete"][0].error
    with pytest.raises(base.PluginError, match="'missing'.*broken.*caffeseg_missing"):
        base.get_plugin("missing")
    app = create_app({"DATA_DIR": str(tmp_path), "BACKEND": FakeBackend(tmp_path / "jobs")})
    html = app.test_client().get("/").get_data(as_text=True)
    assert "Sunnybrook LV Segmentation</a>" in html
    assert "missing (broken)" in html and "incomplete (broken)" in html
    resp = app.test_client().get("/datasets/new/incomplete")
    assert resp.status_code == 404 and "broken" in resp.get_data(as_text=True)


def test_standard_network_descriptions_are_whole_sentences_and_distinct():
    from caffeseg.jobs.networks import network_description as _network_description, standard_networks
    descriptions = {n["name"]: n["description"] for n in standard_networks()}
    assert len(descriptions) >= 7
    assert all(d.endswith(".") for d in descriptions.values()), descriptions  # never cut mid-sentence
    assert len(set(descriptions.values())) == len(descriptions), descriptions
    assert "up-convolutions" in descriptions["unet"] and "Dice" in descriptions["fcn_alexnet_dice"]
    assert _network_description('name: "x"\n# One line.\n#\n# Details.\nlayer {}\n# inside\n') == "One line."
    assert _network_description('name: "x"\nlayer {}\n# a comment among the layers\n') == ""


def test_visualize_errors_name_the_editor_line_never_a_temporary_file():
    from caffeseg.web.backend import BadRequest
    from caffeseg.web.netinspect import inspect
    with pytest.raises(BadRequest) as info:
        inspect('name: "n"\n\n\n\nlayer { layer { } }\n')
    assert str(info.value).startswith("custom network, line 5, column ") and str(info.value).count("line") == 1
    unbuilt = ('name: "conv1"\n# layer { name: "conv1" }\n'
               'layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } }\n'
               'layer { name: "conv1" type: "Convolution" bottom: "dta" top: "conv1" '
               'convolution_param { num_output: 8 kernel_size: 3 } }\n')
    with pytest.raises(BadRequest) as info:
        inspect(unbuilt, [1, 16, 16])
    assert "/tmp" not in str(info.value) and ".prototxt" not in str(info.value), str(info.value)
    assert "custom network, line 4" in str(info.value) and "'dta'" in str(info.value) and info.value.line == 4
