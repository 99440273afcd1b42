"""The data-plugin contract (in the spirit of DIGITS' data extensions).

A data plugin turns a user's files into dataset records. A plugin is a subclass of
``DataPlugin`` (an ``abc.ABC``: a subclass that lacks one of the abstract methods cannot be
built, so it is reported as broken at discovery, not when a user opens its form). It declares:

* ``id``, ``title`` and ``category`` - how the web and CLI name it (the web's New Dataset menu
  groups plugins by category, as DIGITS' "Images ▸ ...");
* ``form_fields()`` - the fields of its dataset form (``FormField``: label, help text, default,
  validation); the web builds its form from these same objects;
* ``itemize(values)`` - which entries go to which stage (``train`` / ``val`` / ``test``), plus
  the entries it had to skip and why;
* ``encode(entry, values)`` - one entry -> ``EncodedRecord`` (feature and label numpy arrays,
  C x H x W, plus metadata such as the source file names);
* ``class_labels(values)`` and ``palette(values)`` - the segmentation classes and colours;
* ``inference_form()`` - how a user picks something to run a model on (default: "a record from
  the validation set").

Plugins are found through the ``caffeseg.plugins`` entry-point group, so a third party adds one
with ``pip install``; see docs/PLUGINS.md. A plugin is built with no arguments.

A broken plugin (its entry point does not import, is not a ``DataPlugin`` subclass, or cannot
be built) is reported - logged, and listed in ``Discovery.broken`` with the reason - and does
not hide the others; asking for it by id raises ``PluginError`` with that reason.

Errors: ``FormError`` for invalid form values (one message per field), ``PluginError`` for a
whole input that cannot be used (empty folder, not this kind of data), ``EntryError`` for one
entry that must be skipped (the builder logs it and carries on).
"""

import abc
from dataclasses import dataclass, field
import importlib
import importlib.metadata
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "caffeseg.plugins"
STAGES = ("train", "val", "test")

# The plugins this package ships (its pyproject entry points), found even where the package
# metadata is absent: a checkout on PYTHONPATH that was never pip-installed.
BUILTIN_PLUGINS = {"sunnybrook": "caffeseg.plugin.sunnybrook:SunnybrookPlugin",
                   "image_segmentation": "caffeseg.plugin.image_segmentation:ImageSegmentationPlugin"}


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
    """One field of a plugin form. ``kind`` is one of path (a folder), file, choice, int, float,
    bool, text."""

    name: str
    label: str
    kind: str = "text"
    default: Any = None
    help: str = ""
    required: bool = True
    choices: Sequence[Tuple[str, str]] = ()  # (value, label)
    min: Optional[float] = None
    max: Optional[float] = None
    must_exist: bool = True  # for kind="path"/"file": the folder/file must exist

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
                raise ValueError("%s is a file, not a folder" % path if os.path.isfile(path)
                                 else "folder %s does not exist" % path)
            return os.path.abspath(path)
        if self.kind == "file":
            path = os.path.expanduser(str(raw).strip())
            if self.must_exist and not os.path.isfile(path):
                raise ValueError("%s %s" % (path, "is a folder, not a file" if os.path.isdir(path)
                                            else "does not exist"))
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
    # what the user should check although nothing was skipped; the build logs them and keeps
    # them in dataset.json ("warnings")
    warnings: List[str] = field(default_factory=list)


@dataclass
class EncodedRecord:
    """``encode``'s result: C x H x W arrays and per-record metadata for dataset.json."""

    feature: Any
    label: Any
    meta: Dict[str, Any] = field(default_factory=dict)


class DataPlugin(abc.ABC):
    """Base class of data plugins: subclasses set ``id``/``title`` (and ``category``) and
    implement the abstract methods; ``validate``, ``inference_form`` and ``describe`` have
    defaults."""

    id = ""
    title = ""
    category = "Images"

    @abc.abstractmethod
    def form_fields(self) -> List[FormField]:
        """The dataset form's fields, in display order."""

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

    @abc.abstractmethod
    def itemize(self, values) -> Itemization:
        """Entries per stage (cheap: list files, check they exist), skipped entries, split."""

    @abc.abstractmethod
    def encode(self, entry: Entry, values) -> EncodedRecord:
        """One entry -> C x H x W feature and label arrays plus JSON-safe metadata."""

    @abc.abstractmethod
    def class_labels(self, values) -> List[str]:
        """Class names; index = label value."""

    @abc.abstractmethod
    def palette(self, values) -> List[Tuple[int, int, int]]:
        """One (r, g, b) per class."""

    def inference_form(self) -> Dict[str, Any]:
        """Default: pick one record of the validation set."""
        return {"kind": "dataset_record", "stage": "val",
                "help": "Pick a record from the dataset's validation set."}

    def describe(self):
        return {"id": self.id, "title": self.title,
                "fields": [f.as_dict() for f in self.form_fields()],
                "inference": self.inference_form()}


@dataclass(frozen=True)
class BrokenPlugin:
    """An installed plugin that cannot be used, and why (shown beside the working ones)."""

    name: str    # entry-point name (or built-in id)
    source: str  # "module:attribute"
    error: str


@dataclass
class Discovery:
    """What ``discover_plugins`` found: the working plugins (id -> a built plugin) and the broken."""

    plugins: Dict[str, DataPlugin]
    broken: List[BrokenPlugin]


def _build(name, source, load):
    """(plugin, None) or (None, BrokenPlugin): ``load()`` gives the class named by ``source``."""
    try:
        cls = load()
        if not (isinstance(cls, type) and issubclass(cls, DataPlugin)):
            raise TypeError("%r is not a plugin.base.DataPlugin subclass" % (cls,))
        return cls(), None
    except Exception as exc:  # a third party's import or constructor: any error marks it broken
        return None, BrokenPlugin(name, source, "%s: %s" % (type(exc).__name__, exc))


def _import_attribute(source):
    module_name, _, attr = source.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def discover_plugins() -> Discovery:
    """Every plugin of the ``caffeseg.plugins`` entry points (plus the built-in ones not
    registered there), each built once; broken ones are logged and listed, never raised."""
    plugins, broken = {}, []
    candidates = [(ep.name, ep.value, ep.load)
                  for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    registered = {name for name, _, _ in candidates}
    candidates += [(name, source, lambda source=source: _import_attribute(source))
                   for name, source in BUILTIN_PLUGINS.items() if name not in registered]
    for name, source, load in candidates:
        plugin, problem = _build(name, source, load)
        if plugin is not None and (plugin.id or name) in plugins:
            problem = BrokenPlugin(name, source, "its id %r is already taken by %s"
                                   % (plugin.id or name, type(plugins[plugin.id or name]).__name__))
        if problem is not None:
            log.warning("data plugin %s (%s) is broken: %s", problem.name, problem.source, problem.error)
            broken.append(problem)
            continue
        plugins[plugin.id or name] = plugin
    return Discovery(plugins, broken)


def get_plugin(plugin_id) -> DataPlugin:
    """The plugin registered under ``plugin_id``; PluginError if it is absent or broken."""
    found = discover_plugins()
    if plugin_id in found.plugins:
        return found.plugins[plugin_id]
    for problem in found.broken:
        if problem.name == plugin_id:
            raise PluginError("data plugin %r (%s) is broken: %s" % (plugin_id, problem.source, problem.error))
    raise PluginError("no data plugin %r (installed: %s)"
                      % (plugin_id, ", ".join(sorted(found.plugins)) or "none"))
