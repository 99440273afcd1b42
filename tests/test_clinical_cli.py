"""caffeseg model evaluate (human report and --json with the clinical table) and caffeseg model
clinical-export, on a phantom dataset and a tiny model trained by the engine."""
import io
import json
import os
import zipfile

import pydicom
import pytest

from caffeseg import cli
from caffeseg.evaluation_text import evaluation_report
from tests.clinical_fixtures import make_release
from tests.jobs_fixtures import TINY_NET


@pytest.mark.timeout(300)
def test_evaluate_report_and_clinical_exports(tmp_path, capsys):
    root = str(tmp_path / "release")
    make_release(root, cases=["SC-HF-I-1", "SC-N-2"], slices=2)
    common = ["--data", str(tmp_path / "data"), "--backend", "engine"]
    assert cli.main(common + ["--json", "dataset", "create", "--image-folder", os.path.join(root, "challenge_training"),
                              "--contour-folder", os.path.join(root, "TrainingDataContours"),
                              "--val-pct", "40", "--name", "ph"]) == 0
    ds = json.loads(capsys.readouterr().out)
    net = tmp_path / "net.prototxt"
    net.write_text(TINY_NET)
    assert cli.main(common + ["--json", "model", "create", "--dataset", ds["id"], "--network-file", str(net),
                              "--epochs", "1", "--set-num-output", "--train"]) == 0
    job_id = json.loads(capsys.readouterr().out)[0]["id"]

    assert cli.main(common + ["--json", "model", "evaluate", job_id]) == 0
    table = json.loads(capsys.readouterr().out)
    clinical = table["clinical"]
    assert [r["phase"] for r in clinical["phase_summary"]] == ["ED", "ES", "all"]
    assert len(clinical["patients"]) == 1 and not clinical["patients"][0]["partial"]
    assert all("apd_mm" in r and r["phase"] in ("ED", "ES") for r in table["records"])

    assert cli.main(common + ["model", "evaluate", job_id]) == 0
    text = capsys.readouterr().out
    assert text.strip() == evaluation_report(table).strip()  # the same evaluation, re-run
    assert "Contours (Sunnybrook challenge" in text and "Patients (predicted / expert" in text
    case = clinical["patients"][0]["case"]
    assert any(line.startswith(case) for line in text.splitlines())

    out = tmp_path / "exports"
    out.mkdir()
    assert cli.main(common + ["--json", "model", "clinical-export", job_id, "--format", "dicom-seg",
                              "--case", case, "--out", str(out)]) == 0
    path = json.loads(capsys.readouterr().out)["path"]
    assert path == str(out / ("seg-%s.zip" % case))
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["seg-%s-ED.dcm" % case, "seg-%s-ES.dcm" % case]
        assert pydicom.dcmread(io.BytesIO(z.read(z.namelist()[0]))).Modality == "SEG"
    assert cli.main(common + ["model", "clinical-export", job_id, "--out", str(out / "c.zip")]) == 0
    assert zipfile.is_zipfile(str(out / "c.zip"))
    assert cli.main(common + ["model", "clinical-export", job_id, "--case", "SC-N-40"]) == cli.EXIT_BAD_INPUT
    assert "of patient SC-N-40" in capsys.readouterr().err

    # the inference read-out of an uploaded series (the patient's DICOM folder) on the same model
    from caffeseg.jobs.service import JobService
    svc = JobService(str(tmp_path / "data" / "jobs"), backend="engine")
    got = svc.infer_series(job_id, os.path.join(root, "challenge_training", case))
    assert len(got["images"]) == 4 and all(r["lv_area_mm2"] is not None for r in got["images"])
    assert got["function"]["spacing_mm"] == pytest.approx(10.0)
    assert set(got["function"]["slices"].values()) == {2}
    # one uploaded DICOM: its predicted LV area in mm² among the result's metrics, as the series reads it
    first = sorted(os.listdir(os.path.join(root, "challenge_training", case)))[0]
    one = svc.infer_image(job_id, os.path.join(root, "challenge_training", case, first))
    by_name = {r["source"]: r for r in got["images"]}
    assert one["metrics"]["lv_area_mm2"] == pytest.approx(by_name[first]["lv_area_mm2"])
