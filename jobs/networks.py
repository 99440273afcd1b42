"""The Standard Networks: the DIGITS-style networks of ``prototxt/``, with their titles and
descriptions (one catalogue for the CLI and the web).

A network is a ``<name>.prototxt`` file (train/val/deploy stages in one file; ``*deploy.prototxt``
and ``*solver.prototxt`` files are not networks). Its title is the first column of the table in
``prototxt/README.md`` (``| FCN-AlexNet | `fcn_alexnet.prototxt` | ...``); its description the
first paragraph of its header comment (the ``#`` lines after ``name:`` up to an empty ``#`` line
or the shared "DIGITS-style description" note).
"""
import os

from caffeseg.jobs import resources

NOT_NETWORKS = ("deploy.prototxt", "solver.prototxt")


def standard_networks():
    """``[{name, title, description, text}]`` of every network, sorted by file name."""
    folder = resources.networks_dir()
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".prototxt") and not n.endswith(NOT_NETWORKS))
    titles = network_titles()
    out = []
    for file_name in names:
        with open(os.path.join(folder, file_name), errors="replace") as f:
            text = f.read()
        name = file_name[:-len(".prototxt")]
        out.append({"name": name, "title": titles.get(file_name, name.replace("_", " ")),
                    "description": network_description(text), "text": text})
    return out


def title(name):
    """The display name of network ``name`` (file name without .prototxt)."""
    return network_titles().get(name + ".prototxt", name.replace("_", " "))


def network_titles():
    """File name -> display name, from the table in prototxt/README.md."""
    path = os.path.join(resources.networks_dir(), resources.NETWORKS_README)
    titles = {}
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            for line in f:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) >= 2 and cells[1].startswith("`") and cells[1].endswith(".prototxt`"):
                    titles[cells[1].strip("`")] = cells[0]
    return titles


def network_description(text):
    """The first paragraph of a network's header comment, as one line ("" without one)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if line and not line.startswith("DIGITS-style description"):
                lines.append(line)
                continue
        elif not lines and (not line.strip() or line.lstrip().startswith("name:")):
            continue  # the net's name (or blank lines) before its header
        if lines or not line.startswith("#"):
            break
    return " ".join(lines)
