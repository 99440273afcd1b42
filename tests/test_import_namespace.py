"""Every import of the project's own code goes through the ``caffeseg`` package.

The folders engine/, jobs/, plugin/, web/, prototxt/ and python_layers/ install as
``caffeseg.<folder>`` (pyproject's package-dir). A bare ``import jobs`` would still work from a
checkout's root (the working directory is on ``sys.path`` there) and then load a second copy of
the module under another name, with its own registries and state; in a wheel install it fails.
"""
import ast
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"engine", "jobs", "plugin", "web", "prototxt", "python_layers"}
NOT_OURS = ("tests/golden/", "tests/third_party/")


def _tracked_python_files():
    names = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [n for n in names if not n.startswith(NOT_OURS)]


def _bare_imports(source):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FOLDERS:
                yield node.lineno, name


def test_no_module_imports_a_folder_by_its_bare_name():
    found = []
    for name in _tracked_python_files():
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            found += ["%s:%d %s" % (name, line, module) for line, module in _bare_imports(f.read())]
    assert not found, "import these through caffeseg.<folder>:\n" + "\n".join(found)


def test_the_scan_sees_a_bare_import():
    assert list(_bare_imports("import jobs.store\nfrom web import x\nfrom caffeseg.jobs import y\n")) == \
        [(1, "jobs.store"), (2, "web")]
