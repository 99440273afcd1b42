"""The data-plugin contract (in the spirit of DIGITS' data extensions).

A data plugin turns a user's files into dataset records. It declares:

* ``id`` and ``title`` - how the web and CLI name it;
* ``form_fields()`` - the fields of its dataset form (label, help text, default, validation);
* ``itemize(values)`` - which entries go to which stage (``train`` / ``val`` / ``test``), plus
  the entries it had to skip and why;
* ``encode(entry, values)`` - one entry -> ``EncodedRecord`` (feature and label numpy arrays,
  C x H x W, plus metadata such as the source file names);
* ``class_labels(values)`` and ``palette(values)`` - the segmentation classes and colours;
* ``inference_form()`` - how a user picks something to run a model on (e.g. "a record from the
  validation set").

Plugins are found through the ``caffeseg.plugins`` entry-point group, so a third party adds one
with ``pip install``; see docs/PLUGINS.md.

Errors: ``FormError`` for invalid form values (one message per field), ``PluginError`` for a
whole input that cannot be used (empty folder, not this kind of data), ``EntryError`` for one
entry that must be skipped (the builder logs it and carries on).
"""

from dataclasses import dataclass, field
import importlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

ENTRY_POINT_GROUP = "caffeseg.plugins"
STAGES = ("train", "val", "test")

# Used when the project runs from a checkout that was never pip-installed (no entry points).
_BUILTIN_PLUGINS = {"sunnybrook": "plugin.sunnybrook:SunnybrookPlugin"}


class PluginError(ValueError):
    """The input as a whole cannot be used (the message says which folder and why)."""


class EntryError(ValueError):
    """One entry cannot be encoded; the dataset builder skips it and logs the message."""

    def __init__(self, message, source=None):
        super().__init__(message)
        self.source = source


class FormError(ValueError):
    """Invalid form values; ``errors`` maps field name -> message."""

    def __init__(self, errors):
        self.errors = dict(errors)
        super().__init__("; ".join("%s: %s" % kv for kv in sorted(self.errors.items())))


@dataclass
class FormField:
    """One field of a plugin form. ``kind`` is one of path, choice, int, float, bool, text."""

    name: str
    label: str
    kind: str = "text"
    default: Any = None
    help: str = ""
    required: bool = True
    choices: Sequence[Tuple[str, str]] = ()  # (value, label)
    min: Optional[float] = None
    max: Optional[float] = None
    must_exist: bool = True  # for kind="path": the folder must exist

    def clean(self, raw):
        """Return the typed value for ``raw`` or raise ValueError with a user-facing message."""
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            if self.default is not None:
                raw = self.default
            elif self.required:
                raise ValueError("this field is required")
            else:
                return None
        if self.kind == "bool":
            if isinstance(raw, str):
                text = raw.strip().lower()
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError("expected yes/no, got %r" % raw)
            return bool(raw)
        if self.kind in ("int", "float"):
            caster = int if self.kind == "int" else float
            try:
                value = caster(raw) if self.kind == "float" else caster(str(raw).strip())
            except (TypeError, ValueError):
                raise ValueError("expected %s number, got %r"
                                 % ("a whole" if self.kind == "int" else "a", raw)) from None
            if self.min is not None and value < self.min:
                raise ValueError("must be at least %s (got %s)" % (self.min, value))
            if self.max is not None and value > self.max:
                raise ValueError("must be at most %s (got %s)" % (self.max, value))
            return value
        if self.kind == "choice":
            allowed = [c[0] for c in self.choices]
            if raw not in allowed:
                raise ValueError("must be one of %s (got %r)" % (", ".join(allowed), raw))
            return raw
        if self.kind == "path":
            path = os.path.expanduser(str(raw).strip())
            if self.must_exist and not os.path.isdir(path):
                raise ValueError("folder %s does not exist" % path)
            return os.path.abspath(path)
        return str(raw)

    def as_dict(self):
        return {"name": self.name, "label": self.label, "kind": self.kind,
                "default": self.default, "help": self.help, "required": self.required,
                "choices": [list(c) for c in self.choices], "min": self.min, "max": self.max}


@dataclass
class Entry:
    """One item to encode. ``source`` is JSON-safe metadata naming where it comes from."""

    stage: str
    source: Dict[str, Any]
    payload: Any = None


@dataclass
class Itemization:
    """What ``itemize`` returns: entries per stage, skipped sources with messages, split info."""

    stages: Dict[str, List[Entry]]
    skipped: List[Dict[str, str]] = field(default_factory=list)  # {"file":..., "message":...}
    split: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodedRecord:
    """``encode``'s result: C x H x W arrays and per-record metadata for dataset.json."""

    feature: Any
    label: Any
    meta: Dict[str, Any] = field(default_factory=dict)


class DataPlugin:
    """Base class of data plugins; subclasses set ``id``/``title`` and implement the methods."""

    id = ""
    title = ""

    def form_fields(self) -> List[FormField]:
        raise NotImplementedError

    def validate(self, values) -> Dict[str, Any]:
        """Clean every field; raise FormError naming each bad field."""
        values = dict(values or {})
        cleaned, errors = {}, {}
        for f in self.form_fields():
            try:
                cleaned[f.name] = f.clean(values.get(f.name))
            except ValueError as exc:
                errors[f.name] = "%s: %s" % (f.label, exc)
        if errors:
            raise FormError(errors)
        return cleaned

    def itemize(self, values) -> Itemization:
        raise NotImplementedError

    def encode(self, entry: Entry, values) -> EncodedRecord:
        raise NotImplementedError

    def class_labels(self, values) -> List[str]:
        raise NotImplementedError

    def palette(self, values) -> List[Tuple[int, int, int]]:
        raise NotImplementedError

    def inference_form(self) -> Dict[str, Any]:
        """Default: pick one record of the validation set."""
        return {"kind": "dataset_record", "stage": "val",
                "help": "Pick a record from the dataset's validation set."}

    def describe(self):
        return {"id": self.id, "title": self.title,
                "fields": [f.as_dict() for f in self.form_fields()],
                "inference": self.inference_form()}


def _load(spec, name):
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError("data plugin %r (%s) cannot be loaded: %s" % (name, spec, exc)) from None
    return obj


def _entry_points():
    import importlib.metadata as md
    try:
        return list(md.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # Python 3.9: entry_points() takes no arguments and returns a dict
        return list(md.entry_points().get(ENTRY_POINT_GROUP, ()))


def discover_plugins():
    """Return {id: plugin class} from the ``caffeseg.plugins`` entry points (+ built-ins)."""
    found = {}
    for ep in _entry_points():
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            raise PluginError("data plugin %r (%s) cannot be loaded: %s"
                              % (ep.name, ep.value, exc)) from None
        found[getattr(cls, "id", "") or ep.name] = cls
    for name, spec in _BUILTIN_PLUGINS.items():
        if name not in found:
            found[name] = _load(spec, name)
    return found


def get_plugin(plugin_id):
    """Instantiate the plugin registered under ``plugin_id``."""
    plugins = discover_plugins()
    if plugin_id not in plugins:
        raise PluginError("no data plugin %r (installed: %s)"
                          % (plugin_id, ", ".join(sorted(plugins)) or "none"))
    return plugins[plugin_id]()
