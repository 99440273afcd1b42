"""Path safety, percentile windowing and plugin field reading."""
from __future__ import annotations

import os

import numpy as np
import pytest

from web import imaging
from web.plugins import field_spec
from web.safety import UnsafePath, check_job_id, complete_path, job_file, within


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


def test_field_spec_reads_dicts_and_objects():
    spec = field_spec({"name": "val_pct", "label": "% for validation", "type": "int", "default": 10,
                       "help": "share", "min": 0, "max": 100})
    assert (spec.kind, spec.default, spec.minimum, spec.maximum, spec.help) == ("int", 10, 0, 100, "share")
    spec = field_spec({"name": "split", "choices": [("slice", "Slice"), "patient"]})
    assert spec.kind == "choice" and spec.choices == [("slice", "Slice"), ("patient", "patient")]

    class Decl:
        name = "image_folder"
        help_text = "where"
    spec = field_spec(Decl())
    assert spec.kind == "path" and spec.required and spec.help == "where"


def test_config_accepts_a_path_a_dict_with_aliases_and_an_object(tmp_path, monkeypatch):
    from web.config import resolve
    monkeypatch.delenv("CAFFESEG_DATA_DIR", raising=False)
    assert resolve(str(tmp_path))["JOBS_DIR"] == str(tmp_path.resolve() / "jobs")
    assert resolve({"data": str(tmp_path)})["DATA_ROOTS"] == [str(tmp_path.resolve())]

    class CliConfig:
        data_dir = str(tmp_path)
        jobs_dir = None
        host = "127.0.0.1"
    assert resolve(CliConfig())["JOBS_DIR"] == str(tmp_path.resolve() / "jobs")
    monkeypatch.setenv("CAFFESEG_ALLOW_PYTHON_LAYER_UPLOAD", "false")
    monkeypatch.setenv("CAFFESEG_DATA_ROOTS", f"{tmp_path}:/srv/data")
    settings = resolve({"DATA_DIR": str(tmp_path)})
    assert settings["ALLOW_PYTHON_LAYER_UPLOAD"] is False and settings["DATA_ROOTS"][1] == "/srv/data"


def test_the_installed_sunnybrook_plugin_builds_the_dataset_form():
    pytest.importorskip("plugin.sunnybrook")
    from web.forms import GENERIC_DATASET_FIELDS, dataset_form_class
    from web.plugins import discover
    plugins = {p.id: p for p in discover()}
    sunny = plugins["sunnybrook"]
    names = [f.name for f in sunny.fields]
    assert names[:2] == ["image_folder", "contour_folder"]
    assert all(f.help for f in sunny.fields)
    assert sunny.palette[1] and len(sunny.classes) == 2
    form_cls = dataset_form_class(sunny)
    assert "image_folder" in form_cls.plugin_field_names
    # A plugin field that shares a generic field's name is shown once, as the generic field.
    assert not set(form_cls.plugin_field_names) & set(GENERIC_DATASET_FIELDS)


def test_standard_network_descriptions_are_whole_sentences_and_distinct():
    from web.service_backend import NETWORKS_DIR, _network_description
    files = sorted(p for p in NETWORKS_DIR.glob("*.prototxt") if not p.name.endswith(("deploy.prototxt", "solver.prototxt")))
    if not files:
        pytest.skip("prototxt/ has no networks")
    descriptions = {p.stem: _network_description(p.read_text()) for p in files}
    assert all(d.endswith(".") for d in descriptions.values()), descriptions  # never cut mid-sentence
    assert len(set(descriptions.values())) == len(descriptions), descriptions
    assert "up-convolutions" in descriptions["unet"] and "Dice" in descriptions["fcn_alexnet_dice"]
    assert _network_description('name: "x"\n# One line.\n#\n# Details.\nlayer {}\n# inside\n') == "One line."
    assert _network_description('name: "x"\nlayer {}\n# a comment among the layers\n') == ""


def test_visualize_errors_name_the_editor_line_never_a_temporary_file():
    pytest.importorskip("engine.prototxt")
    from web.backend import BadRequest
    from web.netinspect import inspect
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
