"""A non-editable install finds and serves the shipped files: a wheel of the project installed
into a fresh virtual environment (no access to this checkout) lists the Standard Networks and
finds the Dice layer module, both package data found through ``importlib.resources``
(``caffeseg.jobs.resources``), and its web app lists the networks on its API and its New Model form.

The venv is plain (no system site-packages) and gets the wheel only (``--no-deps``): the first
probe needs nothing but the standard library; the second reaches this environment's
dependencies (Flask, torch, ...) through a .pth line, never the checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not what the wheel is built from; a stale build/ would hand setuptools old files.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "tests", "bench", "docs", "docker", "data")

PROBE = """
import importlib.metadata, json
from caffeseg import jobs
from caffeseg.jobs import networks, resources
print(json.dumps({
    "jobs": jobs.__file__,
    "site": __import__("os").path.dirname(__import__("os").path.dirname(__import__("caffeseg").__file__)),
    "networks_dir": resources.networks_dir(),
    "networks": [n["name"] for n in networks.standard_networks()],
    "titles": {n["name"]: n["title"] for n in networks.standard_networks()},
    "dice": resources.python_layer_file("digits_python_layers"),
    "plugins": sorted(ep.name for ep in importlib.metadata.entry_points(group="caffeseg.plugins")),
    "scripts": sorted(ep.name for ep in importlib.metadata.entry_points(group="console_scripts")),
}))
"""


@pytest.mark.slow
def test_a_wheel_install_lists_the_standard_networks_and_finds_the_dice_module(tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    # No build isolation: the build backend (setuptools) comes from this environment, not PyPI.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, timeout=600, cwd=tmp_path, capture_output=True)
    [wheel] = list(wheels.glob("caffeseg-*.whl"))
    # Nothing generic at the top of site-packages: the project's folders are inside caffeseg/.
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if ".dist-info/" not in name}
    assert tops == {"caffeseg", "caffe"}, tops
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=600, cwd=tmp_path)
    # -I: no PYTHONPATH, no user site, not the working directory; cwd is outside the checkout.
    out = subprocess.run([str(python), "-I", "-c", PROBE], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    site = str(env)
    assert found["jobs"].startswith(site) and found["networks_dir"].startswith(site), found
    shipped = sorted(n[:-len(".prototxt")] for n in os.listdir(os.path.join(ROOT, "prototxt"))
                     if n.endswith(".prototxt") and not n.endswith(("deploy.prototxt", "solver.prototxt")))
    assert found["networks"] == shipped and {"fcn_alexnet", "fcn_alexnet_dice", "unet"} <= set(shipped)
    assert found["titles"]["fcn_alexnet"] == "FCN-AlexNet"  # read from the installed prototxt/README.md
    assert found["dice"].startswith(site) and found["dice"].endswith("python_layers/digits_python_layers.py")
    assert found["plugins"] == ["image_segmentation", "sunnybrook"] and "caffeseg" in found["scripts"]
    assert found["jobs"] == os.path.join(found["site"], "caffeseg", "jobs", "__init__.py")

    # The same wheel serves them: its web app (the dependencies from this environment through a
    # .pth line, not the checkout: this venv's project is an editable finder, whose .pth a path
    # added that way does not run) lists them on /api/networks and in the New Model form.
    import sysconfig
    [wheel_site] = [p for p in (env / "lib").glob("python*/site-packages")]
    (wheel_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([str(python), "-I", "-c", SERVE_PROBE, str(tmp_path / "data")], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["web"].startswith(site) and served["status"] == 200, served
    assert served["names"] == shipped and served["in_form"], served


SERVE_PROBE = """
import json, sys
import caffeseg.web
from caffeseg.web import create_app
app = create_app({"DATA_DIR": sys.argv[1], "START_WORKER": False, "WTF_CSRF_ENABLED": False})
client = app.test_client()
answer = client.get("/api/networks")
form = client.get("/models/new").get_data(as_text=True)
names = sorted(n["name"] for n in answer.get_json()["standard"])
print(json.dumps({"web": caffeseg.web.__file__, "status": answer.status_code, "names": names,
                  "in_form": all(n in form for n in names)}))
"""


def test_the_install_layout_lists_every_package_folder():
    """pyproject's explicit package list (needed for package-dir) names every folder of the tree
    that is a package, under the name it installs as; a new subpackage missing from it would be
    missing from the wheel."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    folder_of = {name: folder for name, folder in setup["package-dir"].items()}
    folder_of.setdefault("caffeseg", "caffeseg")
    expected = set()
    for name, folder in folder_of.items():
        for here, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not os.path.join(here, d).startswith(
                os.path.join(ROOT, "engine", "pycaffe_proxy"))]
            if "__init__.py" in files:
                rel = os.path.relpath(here, os.path.join(ROOT, folder))
                expected.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    assert set(setup["packages"]) == expected
