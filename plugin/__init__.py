"""Data plugins: the contract (plugin.base) and the built-in Sunnybrook plugin."""

from caffeseg.plugin.base import (BrokenPlugin, DataPlugin, Discovery, EncodedRecord, Entry, EntryError, FormError,
                         FormField, Itemization, PluginError, discover_plugins, get_plugin)

__all__ = ["BrokenPlugin", "DataPlugin", "Discovery", "EncodedRecord", "Entry", "EntryError", "FormError",
           "FormField", "Itemization", "PluginError", "discover_plugins", "get_plugin"]
