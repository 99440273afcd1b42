"""Issue 21 (the lab walked as a newcomer in Chromium): the pages' fixes, on the fake backend.
Fixtures from tests/test_browser_e2e.py (Chromium + Playwright; skipped without them)."""
from __future__ import annotations

import pytest

from test_browser_e2e import browser_page, fake_site  # noqa: F401  (pytest fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def _metrics_with(series, status="Running", iters_per_epoch=2):
    def metrics(job_id, since=0):
        return {"status": status, "progress": 0.5, "iteration": 4, "iters_per_epoch": iters_per_epoch,
                "series": {name: [p for p in pts if p[0] >= since] for name, pts in series.items()}}
    return metrics


# -- item 13 -----------------------------------------------------------------------------------

def test_ui_accuracy_is_drawn_in_percent_on_a_0_to_100_axis(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "acc", status="Running", dataset_id=ds)
    fake.metrics = _metrics_with({"train/loss": [[1, 0.9], [2, 0.7]], "val/accuracy": [[2, 0.981], [4, 0.99]]})
    page = browser_page
    page.goto(f"{url}/models/{m}")
    plot = "document.querySelector('.chart[data-chart=\"accuracy\"] .plot')"
    page.wait_for_function(f"{plot} && {plot}.data && {plot}.data[0].y.length === 2")
    y = page.evaluate(f"{plot}.data[0].y")
    assert y == pytest.approx([98.1, 99.0])
    axis = page.evaluate(f"{plot}.layout.yaxis")
    assert axis["range"] == [0, 100] and axis["ticksuffix"] == " %"
    # the loss chart keeps its own values and autorange
    loss = page.evaluate("document.querySelector('.chart[data-chart=\"loss\"] .plot').data[0].y")
    assert loss == pytest.approx([0.9, 0.7])
    assert not page.js_errors


def test_ui_abort_asks_for_confirmation(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "long", status="Running", dataset_id=ds)
    page = browser_page
    dialogs = []

    def answer(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", answer)
    page.goto(f"{url}/models/{m}")
    page.click("#abort-btn")
    assert dialogs and dialogs[0].startswith("Abort this training?")
    assert ("abort", m) not in fake.calls and fake.jobs_[m]["status"] == "Running"
    page.remove_listener("dialog", answer)
    page.on("dialog", lambda d: d.accept())
    page.click("#abort-btn")
    page.wait_for_load_state()
    assert ("abort", m) in fake.calls


def test_ui_an_errored_job_without_iterations_does_not_say_waiting(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "broken", status="Error", dataset_id=ds, error="Check failed: bottom shape")
    fake.jobs_[m]["snapshots"] = []
    fake.metrics = _metrics_with({}, status="Error")
    page = browser_page
    page.goto(f"{url}/models/{m}")
    text = page.inner_text("#charts")
    assert "Waiting for the first iterations" not in text
    assert "No iterations were recorded" in text and "the error is above" in text


def test_ui_the_header_of_an_aborted_job_stays_on_one_line(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "FCN-AlexNet on the sample, lab run", status="Aborted", dataset_id=ds)
    fake.jobs_[m]["snapshots"] = []  # no .solverstate: the "nothing to resume" note shows
    page = browser_page
    page.goto(f"{url}/models/{m}")
    boxes = page.evaluate("[...document.querySelectorAll('.title-row > :not(.spacer)')].map(e => e.getBoundingClientRect().top)")
    assert max(boxes) - min(boxes) < 12, boxes  # title, badge and buttons share one line
    assert page.is_visible("#no-resume")
    badge = page.evaluate("(() => { const h = document.querySelector('.title-row h1').getBoundingClientRect();"
                          " const b = document.querySelector('#job-status .badge').getBoundingClientRect();"
                          " return [h.top, b.top, b.bottom, h.bottom]; })()")
    assert badge[0] <= badge[1] and badge[2] <= badge[3] + 1


def test_new_model_form_starts_from_fcn_alexnet(fake_site):
    import urllib.request
    url, fake, _ = fake_site
    fake.standard_networks = lambda: [
        {"name": n, "title": n, "description": "", "text": "name: 'x'\n"}
        for n in ("deeplab_aspp", "fcn_8s", "fcn_alexnet", "unet")]
    html = urllib.request.urlopen(f"{url}/models/new").read().decode()
    checked = [line for line in html.splitlines() if 'name="standard_network"' in line and "checked" in line]
    assert len(checked) == 1 and 'value="fcn_alexnet"' in checked[0]


# -- item 11 -----------------------------------------------------------------------------------

LAB_LIKE_NET = ('name: "fcn"\n'
                'layer { name: "train_data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 1 } }\n'
                'layer { name: "val_data" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 4 } }\n')


def test_ui_lr_preview_uses_the_networks_batch_and_the_datasets_size(browser_page, fake_site):
    """The issue's case: 31 training records, the network's batch 1, 2 epochs = 62 iterations
    (the preview used to assume batch 16: '4 iterations, 2 per epoch')."""
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "sample", summary={"train_count": 31, "val_count": 8, "classes": ["bg", "lv"]})
    fake.standard_networks = lambda: [{"name": "fcn_alexnet", "title": "FCN-AlexNet", "description": "", "text": LAB_LIKE_NET},
                                      {"name": "unet", "title": "U-Net", "description": "",
                                       "text": LAB_LIKE_NET.replace("batch_size: 1 ", "batch_size: 2 ")}]
    page = browser_page
    page.goto(f"{url}/models/new")
    page.select_option("#dataset", ds)
    page.fill("#epochs", "2")
    page.check("#show-advanced-lr")
    page.wait_for_selector("#lr_policy", state="visible")
    info = page.inner_text("#lr-preview-info")
    assert "62 iterations, 31 per epoch" in info and "31 training records" in info and "batch 1 (the network's)" in info
    page.check("input[name=standard_network][value=unet]")  # its train batch is 2
    assert "32 iterations, 16 per epoch" in page.inner_text("#lr-preview-info")
    page.fill("#batch_size", "8")  # the form's value wins
    info = page.inner_text("#lr-preview-info")
    assert "8 iterations, 4 per epoch" in info and "batch 8 (the form's)" in info
    page.fill("#batch_size", "")
    page.click("[data-net-tab=custom]")
    page.fill("#custom_network", LAB_LIKE_NET.replace("batch_size: 1 ", "batch_size: 31 "))
    assert "2 iterations, 1 per epoch" in page.inner_text("#lr-preview-info")
    assert not page.js_errors


def test_ui_model_page_shows_the_jobs_settings(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "set", dataset_id=ds)
    fake.jobs_[m]["settings"] = [("Network", "standard network fcn_alexnet.prototxt"), ("Epochs", "2 (62 iterations, 31 per epoch)"),
                                 ("Batch size", "1 (the network's own)"), ("Solver", "SGD"), ("Learning rate policy", "step (gamma 0.1, stepsize 21)"),
                                 ("Pretrained weights", "none (from the fillers)"), ("Backend", "engine; ran on engine 1.0"), ("Device", "cpu")]
    page = browser_page
    page.goto(f"{url}/models/{m}")
    rows = page.eval_on_selector_all("#settings tr", "trs => trs.map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    assert dict(rows)["Batch size"] == "1 (the network's own)" and dict(rows)["Device"] == "cpu"
    assert [r[0] for r in rows][:3] == ["Network", "Epochs", "Batch size"]


# -- item 12 -----------------------------------------------------------------------------------

def test_ui_the_form_shows_the_time_per_epoch_and_suggests_a_smaller_run(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "sample", summary={"train_count": 31, "val_count": 8, "classes": ["bg", "lv"]})
    fake.standard_networks = lambda: [{"name": n, "title": n, "description": "", "text": LAB_LIKE_NET}
                                      for n in ("fcn_alexnet", "unet")]
    # the last FCN-AlexNet here: 12.4 s per training image (6.4 min per epoch of 31 records)
    fake.costs = {"fcn_alexnet": {"seconds_per_image": 12.4, "images": 62, "seconds": 768.8,
                                  "job_id": "20260101-000000-0009", "job_name": "lab run", "status": "Done"}}
    page = browser_page
    page.goto(f"{url}/models/new")
    assert not page.is_visible("#cost-hint")  # no dataset chosen yet
    page.select_option("#dataset", ds)
    page.fill("#epochs", "30")
    hint = page.inner_text("#cost-hint")
    assert hint.startswith("About 6.4 min per epoch here (31 training records; measured on lab run, 20260101-000000-0009")
    assert "3.2 h for 30 epochs" in hint and "That is hours: for a first look try 9 epochs" in hint
    assert "warn-text" in page.get_attribute("#cost-hint", "class")
    page.fill("#epochs", "2")
    hint = page.inner_text("#cost-hint")
    assert "12.8 min for 2 epochs" in hint and "hours" not in hint
    # no training of U-Net here: the server measures a training step in the background; the
    # form says so, asks again while it measures, then shows the estimate
    fake.estimates = {"unet": [{"state": "measuring"}, {"state": "done", "seconds_per_image": 0.5, "batch": 1}]}
    page.check("input[name=standard_network][value=unet]")
    assert page.inner_text("#cost-hint") == "Measuring a training step of this network here…"
    page.wait_for_function("document.getElementById('cost-hint').textContent.startsWith('About')", timeout=10000)
    hint = page.inner_text("#cost-hint")
    assert hint.startswith("About 16 s per epoch here (31 training records; estimated from one training step (batch 1)")
    assert "31 s for 2 epochs" in hint
    assert [c for c in fake.calls if c[0] == "cost_estimate"] == [("cost_estimate", "unet", ds)] * 2
    assert not page.js_errors


# -- items 5 and 10: compare across datasets, telling models apart -------------------------------

def _two_datasets(fake):
    a = fake.add_job("dataset", "sample")
    b = fake.add_job("dataset", "small phantom")
    names = {a: ["SC-HF-I-1 / 0021", "SC-HF-I-1 / 0041"], b: ["SC-HF-I-1 / 0041", "SC-N-2 / 0060"]}

    def dataset_records(job_id, stage, offset, limit):
        recs = [{"index": i, "key": f"{i:08d}", "name": n} for i, n in enumerate(names[job_id])]
        return {"total": len(recs), "records": recs[offset:offset + limit]}
    fake.dataset_records = dataset_records
    ma = fake.add_job("model", "FCN-AlexNet", dataset_id=a)
    mb = fake.add_job("model", "FCN-AlexNet", dataset_id=b)  # the same name, another dataset
    return a, b, ma, mb


def test_compare_across_datasets_matches_records_by_case_and_image(fake_site):
    import urllib.request
    url, fake, _ = fake_site
    _, _, ma, mb = _two_datasets(fake)
    # SC-HF-I-1 / 0041 is key 1 in the first dataset and key 0 in the second
    html = urllib.request.urlopen(f"{url}/compare?models={ma}&models={mb}&record=00000001").read().decode()
    infers = {c[1]: c[3] for c in fake.calls if c[0] == "infer"}
    assert infers == {ma: "00000001", mb: "00000000"}
    assert "Not compared" not in html
    # SC-HF-I-1 / 0021 is not in the second dataset: refused with the reason, not another slice shown
    fake.calls.clear()
    html = urllib.request.urlopen(f"{url}/compare?models={ma}&models={mb}&record=00000000").read().decode()
    assert {c[1]: c[3] for c in fake.calls if c[0] == "infer"} == {ma: "00000000"}
    assert "whose validation set has no record SC-HF-I-1 / 0021" in html


def test_models_of_the_same_name_show_their_dataset_and_id(browser_page, fake_site):
    url, fake, _ = fake_site
    _, _, ma, mb = _two_datasets(fake)
    page = browser_page
    page.goto(f"{url}/?tab=model")
    rows = page.eval_on_selector_all("#panel-model tr[data-job-id]", "trs => trs.map(r => r.cells[1].innerText)")
    assert any(ma in r and "sample" in r for r in rows) and any(mb in r and "small phantom" in r for r in rows)
    page.goto(f"{url}/compare")
    labels = page.eval_on_selector_all("#compare-form label.check", "ls => ls.map(l => l.innerText)")
    assert any("FCN-AlexNet" in l and "· sample ·" in l and ma in l for l in labels)
    assert any("FCN-AlexNet" in l and "· small phantom ·" in l and mb in l for l in labels)
    page.goto(f"{url}/models/new")
    page.click("[data-net-tab=previous]")
    prev = page.eval_on_selector_all("[data-net-panel=previous] tbody tr", "trs => trs.map(r => r.cells[1].innerText)")
    assert any(ma in r and "sample" in r for r in prev) and any(mb in r and "small phantom" in r for r in prev)
    assert not page.js_errors


# -- item 3 (the page's part) --------------------------------------------------------------------

def test_ui_download_model_says_it_is_preparing_until_the_download_starts(browser_page, fake_site):
    import time as _time
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "big", dataset_id=ds)
    real_download = fake.download

    def slow_download(job_id, snapshot=None, fmt="tar.gz"):
        _time.sleep(2.5)  # packing a 200 MB archive (the fake's download_stream waits for it)
        return real_download(job_id, snapshot, fmt)
    fake.download = slow_download
    page = browser_page
    page.goto(f"{url}/models/{m}")
    assert page.is_hidden("#download-note")
    with page.expect_download(timeout=20000) as download:
        page.click("#download-btn")
        page.wait_for_selector("#download-note[data-state=preparing]", state="visible", timeout=2000)
        assert page.inner_text("#download-note").startswith("Preparing the model archive…")
    page.wait_for_selector("#download-note[data-state=started]", timeout=10000)
    assert download.value.suggested_filename.endswith("_iter_4.tar.gz")
    assert page.evaluate("window.location.pathname") == f"/models/{m}"  # the page stayed
    # the snapshot table's archive link does the same
    page.wait_for_selector("#download-note", state="hidden", timeout=10000)
    with page.expect_download(timeout=20000):
        page.click("#snapshots a.archive-link")
        page.wait_for_selector("#download-note[data-state=preparing]", state="visible", timeout=2000)
    page.wait_for_selector("#download-note[data-state=started]", timeout=10000)
    assert not page.js_errors


# -- item 15 -----------------------------------------------------------------------------------

def test_ui_internal_split_blobs_are_hidden_until_asked_for(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "viz", dataset_id=ds)
    real_infer = fake.infer

    def infer(job_id, snapshot, **kw):
        result = real_infer(job_id, snapshot, **kw)
        if kw.get("visualize"):
            row = dict(result["layers"][0])
            result["layers"] = [row, dict(row, name="conv1_relu1_0_split_0"), dict(row, name="conv1_relu1_0_split_1"),
                                dict(row, name="score_split")]  # not Caffe's pattern: kept
        return result
    fake.infer = infer
    page = browser_page
    page.goto(f"{url}/models/{m}/infer")
    page.select_option("select[name=record]", "00000001")
    page.check("input[name=visualize]")
    page.click("form#record-form button[type=submit], form:has(select[name=record]) button[type=submit]")
    page.wait_for_selector("#layer-table")
    visible = lambda: page.eval_on_selector_all("#layer-table tbody tr", "trs => trs.filter(t => !t.hidden).map(t => t.cells[0].textContent)")  # noqa: E731
    assert visible() == ["conv1", "score_split"]
    assert "internal split blobs (2" in page.inner_text("label:has(#show-split-blobs)")
    page.check("#show-split-blobs")
    assert visible() == ["conv1", "conv1_relu1_0_split_0", "conv1_relu1_0_split_1", "score_split"]
    assert not page.js_errors
