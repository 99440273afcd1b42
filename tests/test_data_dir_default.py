"""One default data folder for the CLI, the web app and `make serve` (a newcomer's `caffeseg jobs`
after `make serve` lists the browser's jobs)."""
import argparse
import os
import subprocess

from caffeseg import cli
from caffeseg.web import config


def test_cli_and_web_share_the_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFESEG_DATA", raising=False)
    monkeypatch.delenv("CAFFESEG_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(data=None)
    assert cli.data_root(args) == str(tmp_path / ".caffeseg")
    assert config.resolve({})["DATA_DIR"] == str(tmp_path / ".caffeseg")


def test_caffeseg_data_moves_both(monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFESEG_DATA_DIR", raising=False)
    monkeypatch.setenv("CAFFESEG_DATA", str(tmp_path / "shared"))
    assert cli.data_root(argparse.Namespace(data=None)) == str(tmp_path / "shared")
    assert config.resolve({})["DATA_DIR"] == str(tmp_path / "shared")


def test_make_serve_passes_no_other_folder():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    line = subprocess.run(["make", "-n", "-s", "serve"], cwd=root, capture_output=True, text=True).stdout.splitlines()[-1]
    assert "caffeseg serve" in line and "--data" not in line
    line = subprocess.run(["make", "-n", "-s", "serve", "DATA=/x"], cwd=root, capture_output=True, text=True).stdout
    assert "--data /x" in line
