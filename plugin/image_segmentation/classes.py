"""The classes of an image-segmentation dataset: names and colours, from the user's files.

Two optional text files, in DIGITS' formats:

* the colour map file: line *i* gives the colour of class *i − 1* as three integers
  ``r g b`` (0..255) separated by blanks (DIGITS' "Color map file"; label images are then RGB
  and each pixel's colour names its class);
* the class labels file: line *i* gives the name of class *i − 1* (DIGITS' "Class labels").

Blank lines at the end are ignored; a blank line in the middle is an error (it would shift every
later class by one). Without a colour map the palette is the first label image's own (palette
PNG), else generated (``generated_palette``: PASCAL VOC's colour map, class 0 black).
"""

import os

MAX_CLASSES = 256  # labels are stored as uint8
MAX_TEXT_FILE_BYTES = 64 * 1024
MAX_NAME_CHARS = 100


class ClassFileError(ValueError):
    """A colour map or class labels file that cannot be used (the message names file and line)."""


def _lines(path, what):
    """The file's lines without the trailing blank ones; ClassFileError naming the file."""
    try:
        size = os.path.getsize(path)
        if size > MAX_TEXT_FILE_BYTES:
            raise ClassFileError("%s %s is %d bytes; a %s has at most %d lines and is below %d KiB"
                                 % (what, path, size, what, MAX_CLASSES, MAX_TEXT_FILE_BYTES // 1024))
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ClassFileError("%s %s cannot be read (%s)" % (what, path, exc.strerror or exc)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ClassFileError("%s %s is not UTF-8 text (byte %d)" % (what, path, exc.start)) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ClassFileError("%s %s is empty: line i must give class i-1" % (what, path))
    if len(lines) > MAX_CLASSES:
        raise ClassFileError("%s %s has %d lines; labels are 8-bit, so at most %d classes"
                             % (what, path, len(lines), MAX_CLASSES))
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ClassFileError("%s %s, line %d is empty: line i gives class i-1, so every class "
                                 "up to the last needs its line" % (what, path, number))
    return lines


def read_colormap(path):
    """[(r, g, b), ...] from a colour map file, one class per line; ClassFileError otherwise."""
    colours = []
    first_line_of = {}
    for number, line in enumerate(_lines(path, "colour map file"), 1):
        parts = line.split()
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = None
        if values is None or len(values) != 3 or not all(0 <= v <= 255 for v in values):
            raise ClassFileError("colour map file %s, line %d: expected three integers 0..255 "
                                 "'r g b' (the colour of class %d), got %r"
                                 % (path, number, number - 1, line.strip()[:40]))
        colour = tuple(values)
        if colour in first_line_of:
            raise ClassFileError("colour map file %s, line %d: colour %d %d %d is already class %d "
                                 "(line %d); each class needs its own colour"
                                 % ((path, number) + colour + (first_line_of[colour] - 1, first_line_of[colour])))
        first_line_of[colour] = number
        colours.append(colour)
    return colours


def read_class_labels(path):
    """Class names from a class labels file, one per line; ClassFileError otherwise."""
    names = []
    for number, line in enumerate(_lines(path, "class labels file"), 1):
        name = line.strip()
        if len(name) > MAX_NAME_CHARS:
            raise ClassFileError("class labels file %s, line %d: a name has at most %d characters"
                                 % (path, number, MAX_NAME_CHARS))
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise ClassFileError("class labels file %s, line %d: control characters in the name"
                                 % (path, number))
        names.append(name)
    return names


def generated_palette(count):
    """PASCAL VOC's colour map for ``count`` classes: class 0 black, 1 (128, 0, 0), 2 (0, 128, 0),
    3 (128, 128, 0), ... (the bits of the class index spread over r, g, b from the top bit down),
    so a VOC-trained user sees VOC's colours."""
    palette = []
    for index in range(count):
        r = g = b = 0
        code = index
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.append((r, g, b))
    return palette
