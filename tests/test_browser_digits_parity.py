"""Issue 18's pages in Chromium *enforcing* the CSP (no inline script may run): the job page's
panels and inline edit (CSRF token included), the Info page, and the Test Many request page
following its progress from the status API until it reloads with the results."""
from __future__ import annotations

import pytest

from test_browser_e2e import fake_site  # noqa: F401 (the fixture)
from test_hardening_browser import enforcing_page, wait_until  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def test_job_panels_edit_info_and_test_many_under_the_csp(enforcing_page, fake_site):  # noqa: F811
    url, fake, data = fake_site
    page = enforcing_page
    ds = fake.add_job("dataset", "d")
    model = fake.add_job("model", "m", dataset_id=ds)
    page.goto(f"{url}/models/{model}")
    assert page.locator("#job-timeline tbody tr").count() == 3
    assert page.locator("#job-related [data-relation=dataset]").inner_text().startswith("dataset: d")
    page.fill("#job-edit-name", "renamed in the browser")
    page.fill("#job-edit-notes", "lr looks high")
    page.click("#job-edit-save")
    page.wait_for_load_state()
    assert page.locator("h1").inner_text().startswith("renamed in the browser")
    assert "lr looks high" in page.locator("#job-notes").inner_text()
    assert page.evaluate("window.__csp") == []

    page.click("#nav-info")
    page.wait_for_load_state()
    assert page.locator("#info-server").inner_text() == "fake-host"

    page.goto(f"{url}/models/{model}/test-many")
    page.fill("#tm-folder", str(data))
    page.click("#tm-start")
    page.wait_for_load_state()
    test_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#tm-table").count() == 1  # the fake finishes at once
    # a request still running: the page follows its progress, then reloads with the results
    rows = fake.tests_[test_id].pop("rows")  # the service writes its rows when the request ends
    fake.tests_[test_id]["status"] = {"state": "Running", "done": 0, "total": 1, "error": None}
    page.goto(page.url)
    assert page.locator("#tm-table").count() == 0 and page.locator("#tm-count").inner_text() == "0 / 1"
    fake.tests_[test_id].update(rows=rows, status={"state": "Done", "done": 1, "total": 1, "error": None})
    wait_until(page, "document.querySelector('#tm-table') !== null")
    assert "img0.png" in page.locator("#tm-table").inner_text()
    assert page.evaluate("window.__csp") == [] and not page.js_errors


def test_home_tables_filter_sort_columns_and_groups(enforcing_page, fake_site):  # noqa: F811
    url, fake, _ = fake_site
    page = enforcing_page
    ds = fake.add_job("dataset", "d")
    a = fake.add_job("model", "alpha", dataset_id=ds, group="sweep")
    b = fake.add_job("model", "beta", dataset_id=ds, group="sweep")
    c = fake.add_job("model", "gamma", dataset_id=ds)
    for job_id, dice in ((a, 0.5), (b, 0.9), (c, 0.7)):
        fake.jobs_[job_id]["metrics"] = {"val/dice": {"last": dice, "min": dice, "max": dice, "spark": [dice]},
                                         "train/accuracy": {"last": 1 - dice, "min": 0, "max": 1, "spark": [0]}}
    page.goto(f"{url}/?tab=model")
    panel = "#panel-model"
    assert page.locator(f'{panel} th[data-metric="train/accuracy"]').is_hidden()  # default: chooser only
    page.click(f"{panel} .col-chooser summary")
    page.check(f'{panel} [data-col-toggle="train/accuracy"]')
    assert page.locator(f'{panel} th[data-metric="train/accuracy"]').is_visible()
    page.goto(f"{url}/?tab=model")  # the choice is remembered
    assert page.locator(f'{panel} th[data-metric="train/accuracy"]').is_visible()
    page.click(f'{panel} th[data-metric="val/dice"]')
    names = page.locator(f"{panel} tbody tr[data-job-id] td:nth-child(2) a").all_inner_texts()
    assert names.index("alpha") < names.index("beta")  # 0.5 before 0.9 inside the group
    page.click(f'{panel} th[data-metric="val/dice"]')
    names = page.locator(f"{panel} tbody tr[data-job-id] td:nth-child(2) a").all_inner_texts()
    assert names.index("beta") < names.index("alpha")
    page.fill(f"{panel} .job-filter", "gam")
    assert page.locator(f'tr[data-job-id="{c}"]').is_visible() and page.locator(f'tr[data-job-id="{a}"]').is_hidden()
    page.fill(f"{panel} .job-filter", "")
    page.click(f"{panel} .group-toggle")
    assert page.locator(f'tr[data-job-id="{a}"]').is_hidden() and page.locator(f'tr[data-job-id="{c}"]').is_visible()
    assert page.evaluate("window.__csp") == [] and not page.js_errors


def test_segmentation_view_threshold_gamma_colormap_legend_hover_and_reset(enforcing_page, fake_site):  # noqa: F811
    url, fake, _ = fake_site
    page = enforcing_page
    ds = fake.add_job("dataset", "d")
    model = fake.add_job("model", "m", dataset_id=ds)
    page.goto(f"{url}/models/{model}/infer")
    page.select_option("#record", "00000001")
    page.click("#test-record")
    wait_until(page, "document.querySelector(\".overlay-view[data-ready='1']\") !== null")
    count = ("(() => { const c = document.querySelector('.overlay-canvas'); const d = c.getContext('2d')"
             ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4)"
             " if (d[i] > d[i + 1] + 40) n++; return n; })()")  # reddish pixels: the coloured LV
    before = page.evaluate(count)
    # the fake's p(lv) is 0.8 on its prediction, 0.3 elsewhere: a threshold of 0.25 makes all of it LV
    page.check(".ov-threshold-on")
    page.fill(".ov-threshold", "25")
    page.dispatch_event(".ov-threshold", "input")
    wait_until(page, "document.querySelector('.overlay-view').dataset.thresholded === '1'")
    assert page.locator(".ov-threshold-value").inner_text() == "0.25"
    assert page.evaluate(count) > before
    page.fill(".ov-gamma", "50")
    page.dispatch_event(".ov-gamma", "input")
    assert page.locator(".ov-gamma-value").inner_text() == "0.50"
    page.select_option(".ov-input-colormap", "jet")
    page.hover('.ov-legend li[data-class="1"]')
    wait_until(page, "document.querySelector('.ov-legend li[data-class=\"1\"]').classList.contains('highlight')")
    page.click(".ov-reset")
    wait_until(page, "document.querySelector('.overlay-view').dataset.thresholded === '0'")
    assert page.locator(".ov-gamma-value").inner_text() == "1.00"
    assert page.locator(".ov-input-colormap").input_value() == "gray" and page.evaluate(count) == before
    assert page.evaluate("window.__csp") == [] and not page.js_errors
