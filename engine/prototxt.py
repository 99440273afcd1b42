"""Text-format prototxt files: nets (NetParameter) and solvers (SolverParameter).

Parsing follows Caffe's ``ReadProtoFromTextFile`` (protobuf text format, a singular field given
twice is an error) and then the same upgrades Caffe applies (see ``engine.upgrade``).
Syntax errors and typos become a ``PrototxtError`` that names the file, line and column, says
what is wrong in plain words and, for a misspelt field or enum value, suggests the closest
valid name.
"""

import difflib
import os
import re
import warnings

from google.protobuf import descriptor_pool, text_format

from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.upgrade import V1_TYPE_TO_STRING, UpgradeError, upgrade_net, upgrade_solver


class PrototxtError(ValueError):
    """A prototxt that cannot be read. ``str()`` is ``path:line:column: message``."""

    def __init__(self, message, path="<string>", line=None, column=None):
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        where = path
        if line is not None:
            where += ":%d" % line
            if column is not None:
                where += ":%d" % column
        super().__init__("%s: %s" % (where, message))


_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]*)"')
_UNKNOWN_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\S+?)\.?$')
_LOCATION = re.compile(r"^\d+:\d+ : ")
_REPEATED_SINGULAR = re.compile(r'Message type "([\w.]+)" should not have multiple "([^"]*)" fields')


def _short(full_name):
    return full_name.split(".", 1)[1] if full_name.startswith("caffe.") else full_name


def _did_you_mean(word, candidates):
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return ' (did you mean "%s"?)' % close[0] if close else ""


def _explain(raw):
    """Rewrite protobuf's ParseError text into a sentence a user understands."""
    text = _LOCATION.sub("", raw)
    text = re.sub(r"^'.*?': ", "", text, flags=re.S)  # some errors quote the whole input
    pool = descriptor_pool.Default()
    m = _UNKNOWN_FIELD.search(text)
    if m:
        type_name, field = m.groups()
        try:
            names = list(pool.FindMessageTypeByName(type_name).fields_by_name)
        except KeyError:
            names = []
        return 'unknown field "%s" in %s%s' % (field, _short(type_name),
                                               _did_you_mean(field, names))
    m = _UNKNOWN_ENUM.search(text)
    if m:
        type_name, value = m.groups()
        value = value.strip('"')
        try:
            names = list(pool.FindEnumTypeByName(type_name).values_by_name)
        except KeyError:
            names = []
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return 'unknown value "%s" for %s (valid: %s)%s' % (
            value, _short(type_name), shown, _did_you_mean(value, names))
    m = _REPEATED_SINGULAR.search(text)
    if m:
        return 'field "%s" of %s is given more than once (it is not a repeated field)' % (
            m.group(2), _short(m.group(1)))
    m = re.search(r"Expected string but found: '?([^'\s]*)'?", text)
    if m:
        word = m.group(1)
        # A V1 enum type (CONVOLUTION) in a current-format layer: suggest the type string.
        return 'expected a quoted string but found %s (write it as "%s")' % (
            word, V1_TYPE_TO_STRING.get(word) or word)
    return text


def _parse(text, message, source):
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PrototxtError("not a text prototxt (byte %d is not UTF-8 text); a binary "
                                "file such as a .caffemodel cannot be read as prototxt"
                                % err.start, source) from None
    if text.startswith("\ufeff"):  # editors on Windows add a byte-order mark
        text = text[1:]
    if "\x00" in text:
        raise PrototxtError("not a text prototxt (it contains NUL bytes); a binary file "
                            "such as a .caffemodel cannot be read as prototxt", source)
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        line = err.GetLine() if hasattr(err, "GetLine") else None
        column = err.GetColumn() if hasattr(err, "GetColumn") else None
        raise PrototxtError(_explain(str(err)), source, line, column) from None
    return message


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PrototxtError("file not found", str(path)) from None
    except IsADirectoryError:
        raise PrototxtError("is a directory, not a prototxt file", str(path)) from None
    except OSError as err:
        raise PrototxtError("cannot read: %s" % err.strerror, str(path)) from None


def _upgrade_net(net, source):
    # Caffe only logs these incompatibilities and goes on; so do we, as Python warnings.
    for message in upgrade_net(net):
        warnings.warn("%s: %s" % (source, message))


def parse_net(text, source="<string>", upgrade=True):
    """Parse a net prototxt (str or bytes) into an upgraded ``NetParameter``."""
    net = _parse(text, caffe_pb2.NetParameter(), source)
    if upgrade:
        try:
            _upgrade_net(net, source)
        except UpgradeError as err:
            raise PrototxtError(str(err), source) from None
    return net


def read_net(path, upgrade=True):
    """Read a net prototxt file into an upgraded ``NetParameter``."""
    return parse_net(_read_text(path), source=str(path), upgrade=upgrade)


def parse_solver(text, source="<string>", upgrade=True):
    """Parse a solver prototxt; the deprecated ``solver_type`` enum becomes ``type``."""
    solver = _parse(text, caffe_pb2.SolverParameter(), source)
    if upgrade:
        try:
            upgrade_solver(solver)
            if solver.HasField("net_param"):
                _upgrade_net(solver.net_param, source)
            if solver.HasField("train_net_param"):
                _upgrade_net(solver.train_net_param, source)
            for net in solver.test_net_param:
                _upgrade_net(net, source)
        except UpgradeError as err:
            raise PrototxtError(str(err), source) from None
    return solver


def read_solver(path, upgrade=True):
    """Read a solver prototxt file like Caffe's ``ReadSolverParamsFromTextFileOrDie``.

    Besides the ``solver_type`` upgrade this applies Caffe's snapshot-prefix rule: without a
    ``snapshot_prefix`` the prefix is the solver path minus its extension; a prefix naming an
    existing directory becomes ``<dir>/<solver file stem>``.
    """
    path = str(path)
    solver = parse_solver(_read_text(path), source=path, upgrade=upgrade)
    if upgrade:
        stem = os.path.splitext(os.path.basename(path))[0]
        if not solver.HasField("snapshot_prefix"):
            solver.snapshot_prefix = os.path.splitext(path)[0]
        elif os.path.isdir(solver.snapshot_prefix):
            solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
    return solver


def format_message(msg):
    """Protobuf text format of ``msg`` (what Caffe writes for a prototxt)."""
    return text_format.MessageToString(msg)
