"""Hardening of the CLI and of the model options every caller shares (issue 16 items 14, 16, 17, 19):
skipped records reported, one validation for CLI/form/API, schedules that cannot be meant,
every subcommand's --help."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from caffeseg import cli
from caffeseg.jobs.model_options import ModelOptionError, check_against_dataset, check_model_options
from caffeseg.jobs.service import JobService, ServiceError
from tests.jobs_fixtures import TINY_NET, make_dataset_dir


def _subcommands(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subcommands(sub, path + (name,))


SUBCOMMANDS = [path for path, _ in _subcommands(cli.build_parser())]


# -- item 19 -------------------------------------------------------------------------------------

def test_there_are_subcommands_to_check():
    assert ("model", "create") in SUBCOMMANDS and ("dataset", "create") in SUBCOMMANDS and ("serve",) in SUBCOMMANDS


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=[" ".join(p) for p in SUBCOMMANDS])
def test_every_subcommand_help_prints(path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(list(path) + ["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: caffeseg") and " ".join(path) in out


# -- item 14 -------------------------------------------------------------------------------------

def test_dataset_create_says_how_many_records_were_skipped_and_why(tmp_path, capsys, phantom_release):
    images, contours_dir = phantom_release
    bad = sorted(p for p in contours_dir.rglob("*icontour*"))[0]
    bad.write_text("1 1\n2 2\n")  # two points: not a contour
    code = cli.main(["--data", str(tmp_path / "data"), "dataset", "create", "--image-folder", str(images),
                     "--contour-folder", str(contours_dir), "--name", "ph", "--split", "slice"])
    out = capsys.readouterr().out
    assert code in (0, None), out
    assert "1 record skipped:" in out
    assert "skipped: %s: a contour needs at least 3 points, found 2" % bad in out


def test_a_file_given_as_a_folder_is_named_as_a_file(tmp_path, capsys, phantom_release):
    images, contours_dir = phantom_release
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code = cli.main(["--data", str(tmp_path / "data"), "dataset", "create", "--image-folder", str(a_file),
                     "--contour-folder", str(contours_dir), "--name", "ph"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert "%s is a file, not a folder" % a_file in err and "does not exist" not in err


def test_val_percent_100_is_refused_upfront(tmp_path, capsys, phantom_release):
    images, contours_dir = phantom_release
    code = cli.main(["--data", str(tmp_path / "data"), "dataset", "create", "--image-folder", str(images),
                     "--contour-folder", str(contours_dir), "--name", "ph", "--val-pct", "100"])
    assert code == cli.EXIT_BAD_INPUT
    assert "val_percent" in capsys.readouterr().err


# -- items 16 and 17: one check for every caller -------------------------------------------------

@pytest.fixture
def svc(tmp_path):
    service = JobService(str(tmp_path / "jobs"), backend="engine")
    service.dataset = service.import_dataset(make_dataset_dir(str(tmp_path / "built"), train=10, val=4), "ds")
    return service


def _create(svc, **options):
    base = {"dataset_id": svc.dataset["id"], "network_text": TINY_NET, "epochs": 1, "name": "m"}
    return svc.create_model(dict(base, **options))


@pytest.mark.parametrize("options, field, words", [
    ({"base_lr": -1}, "base_lr", "negative rate"),
    ({"base_lr": 0}, "base_lr", "never changes the weights"),
    ({"base_lr": "0.01, -0.1"}, "base_lr", "negative rate"),  # every value of a sweep
    ({"batch_size": 0}, "batch_size", "at least 1"),
    ({"batch_size": -4}, "batch_size", "at least 1, got -4"),
    ({"iter_size": 0}, "iter_size", "at least 1"),
    ({"epochs": 0}, "epochs", "at least 1"),
    ({"weight_decay": -0.1}, "weight_decay", "0 or more"),
    ({"lr_policy": {"policy": "exp", "gamma": 0}}, "lr_policy", "0 after the first iteration"),
    ({"lr_policy": {"policy": "exp", "gamma": 1.5}}, "lr_policy", "grow"),
    ({"lr_policy": {"policy": "poly", "power": -1}}, "lr_policy", "grow"),
    ({"lr_policy": {"policy": "multistep", "stepvalue": "50,150"}}, "lr_policy", "never step"),
    ({"lr_policy": {"policy": "multistep", "stepvalue": "80,50"}}, "lr_policy", "must increase"),
    ({"lr_policy": {"policy": "step", "stepsize": 250}}, "lr_policy", "never steps"),
    ({"lr_policy": {"policy": "step", "gamma": 0}}, "lr_policy", "0 at the first step"),
    ({"batch_size": 32}, "batch_size", "larger than the 10 training records"),
])
def test_options_no_training_can_mean_are_refused_naming_the_field(svc, options, field, words):
    with pytest.raises(ServiceError) as err:
        _create(svc, **options)
    assert words in str(err.value)
    assert field in (err.value.field_errors or {}), err.value.field_errors
    assert not any(j["kind"] == "model" for j in svc.list_jobs())


def test_the_cli_gets_the_same_refusals(tmp_path, capsys):
    data = tmp_path / "data"
    code = cli.main(["--data", str(data), "--json", "dataset", "import", make_dataset_dir(str(tmp_path / "b")),
                     "--name", "ds"])
    ds = json.loads(capsys.readouterr().out)
    net = tmp_path / "net.prototxt"
    net.write_text(TINY_NET)
    for flags, words in ((["--base-lr", "-1"], "base_lr must be above 0"),
                         (["--batch-size", "0"], "batch_size must be at least 1"),
                         (["--batch-size", "-4"], "batch_size must be at least 1, got -4"),
                         (["--iter-size", "0"], "iter_size must be at least 1")):
        code = cli.main(["--data", str(data), "model", "create", "--dataset", ds["id"], "--network-file", str(net),
                         "--epochs", "1"] + flags)
        err = capsys.readouterr().err
        assert code == cli.EXIT_BAD_INPUT and words in err, (flags, err)
        assert "Value out of range" not in err


def test_pretrained_weights_of_which_no_layer_matches_are_refused(svc, tmp_path):
    from tests.web_helpers import write_weights
    import numpy as np
    weights = tmp_path / "other.caffemodel"
    write_weights(weights, {"fc8_imagenet": [np.zeros((4, 1, 3, 3), np.float32)]})
    with pytest.raises(ServiceError) as err:
        _create(svc, pretrained=[str(weights)])
    assert "no layer of the pretrained weights matches" in str(err.value) and "fc8_imagenet" in str(err.value)
    assert "pretrained" in err.value.field_errors


def test_a_dataset_without_validation_records_warns_on_the_job_and_the_cli(tmp_path, capsys):
    data = tmp_path / "data"
    cli.main(["--data", str(data), "--json", "dataset", "import",
              make_dataset_dir(str(tmp_path / "b"), train=10, val=0), "--name", "ds"])
    ds = json.loads(capsys.readouterr().out)
    net = tmp_path / "net.prototxt"
    net.write_text(TINY_NET)
    code = cli.main(["--data", str(data), "--json", "model", "create", "--dataset", ds["id"], "--network-file",
                     str(net), "--epochs", "1"])
    captured = capsys.readouterr()
    assert code in (0, None), captured.err
    [job] = json.loads(captured.out)
    assert "warning: %s: the dataset has no validation records" % job["id"] in captured.err
    info = json.loads(open(os.path.join(job["dir"], "job.json")).read())
    assert info["warnings"] and "no validation records" in info["warnings"][0]
    assert "warning: the dataset has no validation records" in open(os.path.join(job["dir"], "log.txt")).read()
    # said to be meant (validation interval 0): no warning
    assert check_against_dataset(10, 0, 2, 2, {"val_interval": 0}) == []


def test_valid_options_pass():
    check_model_options({"base_lr": 0.01, "batch_size": 2, "iter_size": 1, "epochs": 3,
                         "lr_policy": {"policy": "multistep", "stepvalue": "33,66,100", "gamma": 0.5}})
    check_model_options({"lr_policy": {"policy": "exp", "gamma": 0.95}})
    check_model_options({"lr_policy": {"policy": "poly", "power": 2}})
    with pytest.raises(ModelOptionError):
        check_model_options({"base_lr": float("nan")})
