"""What the CLI prints for a person: one-line errors with the ways out, readable `model show`,
records by the name the pages show, documented `lab` options."""
import re
import socket

import pytest

from caffeseg import cli
from tests.test_cli import env, run_json  # noqa: F401  (fixture)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pretrained_offline_is_one_line_with_the_ways_out(tmp_path, capsys):
    url = "http://127.0.0.1:%d/bvlc_alexnet.caffemodel" % closed_port()
    code = cli.main(["--data", str(tmp_path), "pretrained", "bvlc_alexnet", "--url", url])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "CAFFESEG_PRETRAINED_MIRRORS" in err and "--url" in err and "Pretrained Models tab" in err


def test_model_show_reads_as_dates_not_epoch_seconds(env, capsys):
    tmp_path, common, net = env
    from tests.jobs_fixtures import make_dataset_dir
    code, ds = run_json(capsys, common + ["dataset", "import", make_dataset_dir(str(tmp_path / "b")), "--name", "ph"])
    code, [job] = run_json(capsys, ["model", "create", "--dataset", ds["id"], "--network-file", net,
                                    "--epochs", "1", "--backend", "pycaffe"] + common)
    human = [a for a in common if a != "--json"]
    assert cli.main(human + ["model", "show", job["id"]]) == 0
    out = capsys.readouterr().out
    assert re.search(r"created\s+20\d\d-\d\d-\d\d \d\d:\d\d:\d\d", out), out
    assert re.search(r"history\n\s+Initialized\s+20\d\d-", out), out
    assert not re.search(r"\b1[6-9]\d{8}\.\d+", out), out  # no raw epoch seconds


def test_infer_takes_the_record_name_the_pages_show(tmp_path):
    from caffeseg.jobs.dataset import DatasetError, DatasetInfo
    info = DatasetInfo.__new__(DatasetInfo)
    info.info = {"records": {"val": [{"key": "00000000", "case": "SC-HF-I-1", "image_no": 21},
                                     {"key": "00000001", "case": "SC-HF-I-1", "image_no": 48}]}}
    assert info.record_key("val", "00000001") == "00000001"
    assert info.record_key("val", "SC-HF-I-1 / 0021") == "00000000"
    assert info.record_key("val", "sc-hf-i-1/0048") == "00000001"
    with pytest.raises(DatasetError, match=r"no val record 'SC-HF-I-9 / 0001'.*SC-HF-I-1 / 0021 \(00000000\)"):
        info.record_key("val", "SC-HF-I-9 / 0001")
    info.info = {"records": {}}  # a dataset without record metadata: keys pass to the LMDB as they are
    assert info.record_key("val", "00000007") == "00000007"


def test_lab_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lab", "--help"])
    out = capsys.readouterr().out
    assert "Run the DIGITS medical-imaging lab" in out
    for option in ("--epochs", "--base-lr", "--batch-size", "--seed", "--cases", "--only"):
        described = re.search(re.escape(option) + r"\s+\S+\s+\w", out) or re.search(re.escape(option) + r" \S+\n\s+\w", out)
        assert described, option
