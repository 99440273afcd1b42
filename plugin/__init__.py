"""Data plugins: the contract (plugin.base) and the built-in Sunnybrook plugin."""

from plugin.base import (DataPlugin, EncodedRecord, Entry, EntryError, FormError, FormField,
                         Itemization, PluginError, discover_plugins, get_plugin)

__all__ = ["DataPlugin", "EncodedRecord", "Entry", "EntryError", "FormError", "FormField",
           "Itemization", "PluginError", "discover_plugins", "get_plugin"]
