"""Plugin contract: entry-point discovery and form validation."""

import pytest

from caffeseg.plugin import base
from caffeseg.plugin.base import DataPlugin, FormError, PluginError, discover_plugins, get_plugin
from caffeseg.plugin.sunnybrook import SunnybrookPlugin


def test_sunnybrook_is_discovered():
    found = discover_plugins()
    assert isinstance(found.plugins["sunnybrook"], SunnybrookPlugin) and found.broken == []
    assert isinstance(get_plugin("sunnybrook"), SunnybrookPlugin)


class _Toy(base.DataPlugin):
    id, title = "toy", "Toy"

    def form_fields(self):
        return []

    def itemize(self, values):
        return base.Itemization(stages={})

    def encode(self, entry, values):
        raise base.EntryError("toy: nothing to encode")

    def class_labels(self, values):
        return ["a"]

    def palette(self, values):
        return [(0, 0, 0)]


def _entry_points(monkeypatch, *points):
    import importlib.metadata as md
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda group: list(points) + list(real(group=group))
                        if group == base.ENTRY_POINT_GROUP else real(group=group))


class _EP:
    def __init__(self, name, value, load):
        self.name, self.value, self.load = name, value, load


def test_third_party_entry_point_is_found(monkeypatch):
    _entry_points(monkeypatch, _EP("toy", "x:Toy", lambda: _Toy))
    found = discover_plugins()
    assert isinstance(found.plugins["toy"], _Toy) and "sunnybrook" in found.plugins


def test_a_plugin_missing_a_method_cannot_be_built():
    class NoPalette(base.DataPlugin):
        def form_fields(self):
            return []

        def itemize(self, values):
            return base.Itemization(stages={})

        def encode(self, entry, values):
            return None

        def class_labels(self, values):
            return []
    with pytest.raises(TypeError, match="palette"):
        NoPalette()


def test_broken_plugins_are_listed_with_their_reason_and_hide_nothing(monkeypatch):
    def fails():
        raise ImportError("no module named 'gone'")

    class Duplicate(_Toy):
        pass
    _entry_points(monkeypatch, _EP("gone", "gone:Plugin", fails), _EP("notaplugin", "x:dict", lambda: dict),
                  _EP("toy", "x:Toy", lambda: _Toy), _EP("toy2", "x:Duplicate", lambda: Duplicate))
    found = discover_plugins()
    assert set(found.plugins) == {"toy", "sunnybrook", "image_segmentation"}
    reasons = {b.name: b.error for b in found.broken}
    assert reasons["gone"] == "ImportError: no module named 'gone'"
    assert "not a plugin.base.DataPlugin subclass" in reasons["notaplugin"]
    assert "already taken by _Toy" in reasons["toy2"]
    with pytest.raises(PluginError, match="'gone' \\(gone:Plugin\\) is broken: ImportError"):
        get_plugin("gone")


def test_unknown_plugin_is_named():
    with pytest.raises(PluginError, match="no data plugin 'nope'"):
        get_plugin("nope")


def test_form_validation_names_each_bad_field(tmp_path):
    plugin = SunnybrookPlugin()
    with pytest.raises(FormError) as err:
        plugin.validate({"image_folder": str(tmp_path / "missing"), "contour_folder": "",
                         "val_percent": "150", "channel_conversion": "CMYK", "seed": "x"})
    errors = err.value.errors
    assert "does not exist" in errors["image_folder"]
    assert "required" in errors["contour_folder"]
    assert "at most 99" in errors["val_percent"]
    assert "one of L, RGB" in errors["channel_conversion"]
    assert "whole number" in errors["seed"]


def test_defaults_and_description(tmp_path):
    plugin = SunnybrookPlugin()
    # the fields alone (the folders' layout is checked by the plugin's validate, see
    # test_plugin_sunnybrook.py)
    values = DataPlugin.validate(plugin, {"image_folder": str(tmp_path), "contour_folder": str(tmp_path)})
    assert values["val_percent"] == 10 and values["channel_conversion"] == "L"
    assert values["contour_type"] == "inner" and values["split_by"] == "patient"
    assert values["enforce_same_shape"] is True
    desc = plugin.describe()
    assert desc["id"] == "sunnybrook" and all(f["help"] for f in desc["fields"])
    assert desc["inference"]["stage"] == "val"
    assert plugin.class_labels({"contour_type": "inner_outer"}) == \
        ["background", "LV cavity", "myocardium"]
    assert len(plugin.palette({"contour_type": "inner"})) == 2
