"""The Content-Security-Policy (issue 16 item 5) fits the pages: in Chromium *enforcing* it, the
pages that draw Plotly charts, the inference overlay and the network preview run with no CSP
violation at all (Plotly's bundle needs no 'unsafe-eval' for the SVG charts the app draws, and the
pages have no inline script). The other browser tests bypass the CSP because Playwright's
``wait_for_function(str)`` itself needs eval; this one waits by polling ``page.evaluate``."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest

from test_browser_e2e import CHROMIUM_ARGS, CHROMIUM, PLOTLY_POINTS, _require_chromium, fake_site  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

LISTEN = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sourceFile || '') + ':' + e.lineNumber));"""


@pytest.fixture
def enforcing_page():
    _require_chromium()
    from playwright.sync_api import sync_playwright
    profile = tempfile.mkdtemp(prefix="caffeseg-chromium-csp-")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    headless=True, viewport={"width": 1360, "height": 900})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.js_errors = errors
        page.add_init_script(LISTEN)
        try:
            yield page
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def wait_until(page, expression, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def test_pages_run_under_the_csp_without_violations(enforcing_page, fake_site):
    url, fake, _ = fake_site
    page = enforcing_page
    ds = fake.add_job("dataset", "d")
    running = fake.add_job("model", "live", status="Running", dataset_id=ds)
    answer = page.goto(f"{url}/models/{running}")
    assert "script-src 'self';" in answer.headers["content-security-policy"]
    wait_until(page, f"typeof Plotly !== 'undefined' && {PLOTLY_POINTS} > 0")
    wait_until(page, "document.querySelector('.chart[data-chart=\"loss\"] .plot .main-svg') !== null")
    assert page.evaluate("window.__csp") == []

    done = fake.add_job("model", "m", dataset_id=ds)
    page.goto(f"{url}/models/{done}/infer")
    page.select_option("#record", "00000001")
    page.click("#test-record")
    wait_until(page, "document.querySelector(\".overlay-view[data-ready='1']\") !== null")
    assert page.evaluate("window.__csp") == []

    page.goto(f"{url}/models/new?dataset={ds}")
    page.check("#show-advanced-lr")  # loads /vendor/plotly.min.js and draws the LR schedule
    wait_until(page, "!!(document.querySelector('#lr-chart').data && document.querySelector('#lr-chart .main-svg'))")
    page.click("[data-net-tab=custom]")
    page.fill("#custom_network", 'name: "n"\nlayer { name: "d" type: "Input" top: "data" '
                                 'input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n')
    page.click("#visualize")
    wait_until(page, "document.querySelector('.net-graph') !== null")
    assert page.evaluate("window.__csp") == []
    assert not page.js_errors
    # Control: the listener does see what the policy blocks (an inline script, a foreign image).
    page.evaluate("(() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                  " document.head.appendChild(s); const i = document.createElement('img');"
                  " i.src = 'http://example.invalid/x.png'; document.body.appendChild(i); })()")
    wait_until(page, "window.__csp.length >= 2")
    assert page.evaluate("window.__ran") is None
