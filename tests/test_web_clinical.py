"""The evaluation page, its downloads and the clinical take-aways through the real jobs service
(a phantom dataset, a model job whose evaluation was written by jobs.evaluate with an oracle in
place of the network), and the series upload route."""
import csv
import io
import os
import zipfile

import pydicom
import pytest

from caffeseg.plugin.sunnybrook import layout
from tests.clinical_fixtures import evaluated_model_job
from caffeseg.web import create_app
from caffeseg.web.views.clinical import RECORD_COLUMNS


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("web_clinical")
    data = tmp_path / "data"
    app = create_app({"DATA_DIR": str(data), "WTF_CSRF_ENABLED": False, "START_WORKER": False})
    svc = app.extensions["caffeseg_backend"].service
    ds, job = evaluated_model_job(svc, tmp_path)
    return app.test_client(), svc, job, svc.evaluation(job["id"])


def test_evaluation_page_shows_every_record_summary_rows_and_patients(site):
    client, _, job, table = site
    page = client.get("/models/%s/evaluation" % job["id"])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Contours (Sunnybrook challenge)" in html and 'id="record-table"' in html
    for r in table["records"]:
        assert 'data-key="%s"' % r["key"] in html
        assert "/models/%s/infer/record/%s" % (job["id"], r["key"]) in html
    for row in table["clinical"]["phase_summary"]:
        assert '<tr data-phase="%s">' % row["phase"] in html
    for p in table["clinical"]["patients"]:
        assert '<tr data-case="%s"' % p["case"] in html
    # the plots' data as an attribute (no inline script), JSON that parses back to the patients' EFs
    import html as html_lib
    import json
    import re
    points = json.loads(html_lib.unescape(re.search(r"data-points='([^']*)'", html).group(1)))
    complete = [p for p in table["clinical"]["patients"] if not p["partial"]]
    assert [p["case"] for p in points] == [p["case"] for p in complete] and len(points) == 2
    assert points[0]["pred"] == pytest.approx(complete[0]["pred"]["ef_percent"])
    assert "js/evaluation.js" in html
    assert "<script>" not in html  # the CSP allows no inline script


def test_csv_and_json_downloads(site):
    client, _, job, table = site
    for url in ("/models/%s/evaluation.csv" % job["id"], "/api/jobs/%s/evaluation.csv" % job["id"]):
        got = client.get(url)
        assert got.status_code == 200 and got.mimetype == "text/csv"
        assert "attachment" in got.headers["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(got.get_data(as_text=True))))
        assert tuple(rows[0]) == RECORD_COLUMNS and len(rows) == 1 + len(table["records"])
        apd = rows[0].index("apd_mm")
        assert float(rows[1][apd]) == pytest.approx(table["records"][0]["apd_mm"])
    got = client.get("/models/%s/evaluation.json" % job["id"])
    assert got.status_code == 200 and got.get_json()["clinical"]["patients"]


def test_take_away_downloads(site):
    client, _, job, table = site
    case = table["clinical"]["patients"][0]["case"]
    got = client.get("/models/%s/evaluation/export?format=contours&case=%s" % (job["id"], case))
    assert got.status_code == 200 and got.mimetype == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(got.data)).namelist()
    assert names and all(n.startswith(layout.dir_from_case(case) + "/contours-auto/caffeseg/") for n in names)
    key = table["records"][0]["key"]
    got = client.get("/api/jobs/%s/clinical-export?format=dicom-seg&record=%s" % (job["id"], key))
    assert got.status_code == 200 and got.mimetype == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(got.data)).Modality == "SEG"
    bad = client.get("/api/jobs/%s/clinical-export?format=rtstruct" % job["id"])
    assert bad.status_code == 400 and "contours, dicom-seg" in bad.get_json()["error"]
    missing = client.get("/api/jobs/%s/clinical-export?case=SC-N-40" % job["id"])
    assert missing.status_code == 400 and "SC-N-40" in missing.get_json()["error"]


def test_not_evaluated_model_says_so(site):
    client, svc, job, _ = site
    [other] = svc.create_model({"dataset_id": job["dataset_id"], "network_text": open(os.path.join(job["dir"], "original.prototxt")).read(),
                                "set_num_output": True})
    got = client.get("/models/%s/evaluation" % other["id"])
    assert got.status_code == 404 and "not been evaluated" in got.get_data(as_text=True)


def test_series_upload_needs_files_and_refuses_other_types(site):
    client, _, job, _ = site
    got = client.post("/models/%s/series" % job["id"], data={}, content_type="multipart/form-data")
    assert got.status_code == 400 and "DICOM files of one series" in got.get_data(as_text=True)
    got = client.post("/api/jobs/%s/infer-series" % job["id"], headers={"X-Requested-With": "t"},
                      data={"files": (io.BytesIO(b"x"), "notes.txt")}, content_type="multipart/form-data")
    assert got.status_code == 400 and "DICOM files or a zip" in got.get_json()["error"]
    refused = client.post("/api/jobs/%s/infer-series" % job["id"], data={"files": (io.BytesIO(b"x"), "a.dcm")},
                          content_type="multipart/form-data")
    assert refused.status_code == 403  # a cross-site form cannot send X-Requested-With


def test_series_upload_reads_areas_volumes_and_ef(site, tmp_path):
    """The series page on the real service: the model job gets a real (untrained, xavier) engine
    snapshot of its deploy net; the DICOMs of one phantom patient go up as files and as a zip."""
    import zipfile as zf
    from caffeseg import engine
    client, svc, job, table = site
    net = engine.Net(os.path.join(job["dir"], "deploy.prototxt"), engine.TEST)
    net.save(os.path.join(job["dir"], "snapshot_iter_1.caffemodel"))
    case = table["clinical"]["patients"][0]["case"]
    folder = os.path.join(svc.dataset_info(job["dataset_id"]).form_values["image_folder"], case)
    names = sorted(os.listdir(folder))
    files = [(open(os.path.join(folder, n), "rb"), n) for n in names]
    got = client.post("/models/%s/series" % job["id"], data={"files": files}, content_type="multipart/form-data")
    html = got.get_data(as_text=True)
    assert got.status_code == 200, html
    for n in names:
        assert "<td>%s</td>" % n in html  # the user's names, not the stored ones
    assert html.count("<td>phase ") == len(names) == 6
    archive = tmp_path / "series.zip"
    with zf.ZipFile(archive, "w") as z:
        for n in names:
            z.write(os.path.join(folder, n), "sax/" + n)
    got = client.post("/api/jobs/%s/infer-series" % job["id"], headers={"X-Requested-With": "t"},
                      data={"files": (open(archive, "rb"), "series.zip")}, content_type="multipart/form-data")
    answer = got.get_json()
    assert got.status_code == 200, answer
    assert sorted(r["source"] for r in answer["images"]) == names
    assert all(r["lv_area_mm2"] is not None for r in answer["images"])
    assert answer["function"]["spacing_mm"] == pytest.approx(10.0)
    assert set(answer["function"]["slices"].values()) == {3}


def test_dataset_page_warns_about_patients_on_both_sides(site, tmp_path):
    from tests.clinical_fixtures import make_dataset, make_release
    client, svc, job, _ = site
    page = client.get("/datasets/%s" % job["dataset_id"]).get_data(as_text=True)
    assert 'id="split-patients"' in page and 'id="split-leak"' not in page
    root = str(tmp_path / "release")
    make_release(root, cases=["SC-HF-I-1", "SC-N-2"], slices=3)
    make_dataset(root, str(tmp_path / "built"), val_percent=50, split_by="slice")
    ds = svc.import_dataset(str(tmp_path / "built"), "by slice")
    page = client.get("/datasets/%s" % ds["id"]).get_data(as_text=True)
    assert 'id="split-leak"' in page and "SC-HF-I-1, SC-N-2" in page
