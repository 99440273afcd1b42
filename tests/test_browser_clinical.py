"""The evaluation page in headless Chromium on the real jobs service: the record table sorts by a
clicked column (both directions, missing values last) and filters by patient and phase; the EF
Bland–Altman and correlation plots draw one point per complete patient; under the enforced CSP
the page runs with no violation."""
from __future__ import annotations

import time

import pytest

from test_browser_e2e import LiveServer, browser_page  # noqa: F401
from test_hardening_browser import enforcing_page  # noqa: F401
from tests.clinical_fixtures import evaluated_model_job

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@pytest.fixture
def clinical_site(tmp_path):
    from caffeseg.web import create_app
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "START_WORKER": False})
    svc = app.extensions["caffeseg_backend"].service
    _, job = evaluated_model_job(svc, tmp_path)
    server = LiveServer(app)
    yield server.url, job, svc.evaluation(job["id"])
    server.stop()


def _column(page, key):
    return page.evaluate(
        """key => { const t = document.getElementById('record-table');
                    const i = [...t.tHead.rows[0].cells].findIndex(th => th.dataset.key === key);
                    return [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[i].dataset.value); }""", key)


def test_ui_record_table_sorts_and_filters_and_ef_plots_draw(browser_page, clinical_site):
    url, job, table = clinical_site
    page = browser_page
    page.goto(f"{url}/models/{job['id']}/evaluation")
    page.click("#record-table th[data-key=apd_mm]")
    apd = [float(v) for v in _column(page, "apd_mm")]
    assert apd == sorted(apd) and len(apd) == len(table["records"])
    page.click("#record-table th[data-key=apd_mm]")
    assert [float(v) for v in _column(page, "apd_mm")] == sorted(apd, reverse=True)
    assert page.get_attribute("#record-table th[data-key=apd_mm]", "aria-sort") == "descending"
    page.click("#record-table th[data-key=case]")
    cases = _column(page, "case")
    assert cases == sorted(cases)

    case = table["clinical"]["patients"][0]["case"]
    page.select_option("#filter-case", case)
    page.select_option("#filter-phase", "ES")
    shown = _column(page, "phase")
    expected = [r for r in table["records"] if r["case"] == case and r["phase"] == "ES"]
    assert shown == ["ES"] * len(expected) and len(expected) == 3
    assert page.text_content("#record-count") == "%d of %d" % (len(expected), len(table["records"]))

    complete = [p for p in table["clinical"]["patients"] if not p["partial"]]
    page.wait_for_function("document.getElementById('ef-bland-altman').data !== undefined")
    points = page.evaluate("document.getElementById('ef-bland-altman').data[0].y")
    assert sorted(points) == pytest.approx(sorted(p["pred"]["ef_percent"] - p["expert"]["ef_percent"] for p in complete))
    corr = page.evaluate("document.getElementById('ef-correlation').data[0]")
    assert sorted(corr["x"]) == pytest.approx(sorted(p["expert"]["ef_percent"] for p in complete))
    assert page.evaluate("document.querySelectorAll('#ef-bland-altman .point').length") == len(complete)
    assert page.js_errors == []


def test_evaluation_page_under_the_enforced_csp(enforcing_page, clinical_site):
    url, job, table = clinical_site
    page = enforcing_page
    page.goto(f"{url}/models/{job['id']}/evaluation")
    deadline = time.time() + 30
    while time.time() < deadline and not page.evaluate(
            "document.querySelectorAll('#ef-correlation .point').length > 0"):
        time.sleep(0.2)
    assert page.evaluate("document.querySelectorAll('#ef-correlation .point').length") > 0
    assert page.evaluate("window.__csp") == [] and page.js_errors == []
