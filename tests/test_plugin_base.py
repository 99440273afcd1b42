"""Plugin contract: entry-point discovery and form validation."""

import pytest

from plugin import base
from plugin.base import DataPlugin, FormError, PluginError, discover_plugins, get_plugin
from plugin.sunnybrook import SunnybrookPlugin


def test_sunnybrook_is_discovered():
    plugins = discover_plugins()
    assert plugins["sunnybrook"] is SunnybrookPlugin
    assert isinstance(get_plugin("sunnybrook"), SunnybrookPlugin)


def test_third_party_entry_point_is_found(monkeypatch):
    class FakeEP:
        name, value = "toy", "x:Toy"

        def load(self):
            return type("Toy", (base.DataPlugin,), {"id": "toy", "title": "Toy"})

    import importlib.metadata as md
    monkeypatch.setattr(md, "entry_points", lambda group: [FakeEP()] if group == base.ENTRY_POINT_GROUP else [])
    found = discover_plugins()
    assert "toy" in found and "sunnybrook" in found


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
    assert "at most 100" in errors["val_percent"]
    assert "one of L, RGB" in errors["channel_conversion"]
    assert "whole number" in errors["seed"]


def test_defaults_and_description(tmp_path):
    plugin = SunnybrookPlugin()
    # the fields alone (the folders' layout is checked by the plugin's validate, see
    # test_plugin_sunnybrook.py)
    values = DataPlugin.validate(plugin, {"image_folder": str(tmp_path), "contour_folder": str(tmp_path)})
    assert values["val_percent"] == 10 and values["channel_conversion"] == "L"
    assert values["contour_type"] == "inner" and values["split_by"] == "slice"
    assert values["enforce_same_shape"] is True
    desc = plugin.describe()
    assert desc["id"] == "sunnybrook" and all(f["help"] for f in desc["fields"])
    assert desc["inference"]["stage"] == "val"
    assert plugin.class_labels({"contour_type": "inner_outer"}) == \
        ["background", "LV cavity", "myocardium"]
    assert len(plugin.palette({"contour_type": "inner"})) == 2
