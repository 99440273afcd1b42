"""End-to-end tests in Debian's headless Chromium, driven by Playwright.

Two layers: ``test_ui_*`` run the real pages and JavaScript against the in-memory fake backend
(fast, always run when Chromium exists); ``test_full_workflow`` drives the whole product —
phantom dataset, a slim model trained for one epoch, live charts, inference — and runs when the
jobs service, the Sunnybrook plugin and the engine are installed. Screenshots go to
``test-artifacts/`` (gitignored).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _require_chromium():
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (run `make browser-deps`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright (Python) is not installed")


class LiveServer:
    def __init__(self, app):
        from werkzeug.serving import make_server
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def browser_page():
    _require_chromium()
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="caffeseg-chromium-")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    headless=True, viewport={"width": 1360, "height": 900},
                                                    bypass_csp=True)  # wait_for_function(str) needs eval
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.js_errors = errors
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.requests = requests
        try:
            yield page
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# -- the pages' JavaScript on the fake backend -----------------------------------------------

@pytest.fixture
def fake_site(tmp_path):
    from test_web_fakes import FakeBackend, sunnybrook_plugin
    from caffeseg.web import create_app
    fake = FakeBackend(tmp_path / "jobs")
    data = tmp_path / "data"
    (data / "sunny" / "images").mkdir(parents=True)
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()], "POLL_INTERVAL_S": 0.5})
    server = LiveServer(app)
    yield server.url, fake, data
    server.stop()


PLOTLY_POINTS = ("[...document.querySelectorAll('#charts .chart .plot')]"
                 ".reduce((n, d) => n + (d.data || []).reduce((k, t) => k + t.x.length, 0), 0)")


def test_ui_model_page_charts_grow_without_reload(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "live", status="Running", dataset_id=ds)
    page = browser_page
    page.goto(f"{url}/models/{m}")
    page.evaluate("window.__marker = 42")  # survives only if the page is never reloaded
    assert page.evaluate("typeof Plotly.react") == "function"
    page.wait_for_function(f"{PLOTLY_POINTS} > 0")
    first = page.evaluate(PLOTLY_POINTS)
    loss_x = "document.querySelector('.chart[data-chart=\"loss\"] .plot').data[0].x.length"
    first_loss = page.evaluate(loss_x)
    page.wait_for_function(f"{loss_x} > {first_loss}")  # Plotly's own trace grew in place
    assert page.evaluate(PLOTLY_POINTS) > first
    assert page.evaluate("window.__marker") == 42
    titles = page.eval_on_selector_all(".chart-title", "els => els.map(e => e.firstChild.textContent)")
    assert "loss" in titles and "learning rate" in titles
    page.wait_for_function("document.querySelector('.chart[data-chart=\"dice\"] .plot .main-svg') !== null")
    traces = page.evaluate("[...document.querySelector('.chart[data-chart=\"loss\"] .plot').data].map(t => t.name)")
    assert traces[0] == "train/loss"
    lr = page.evaluate("document.querySelector('.chart[data-chart=\"learning rate\"] .plot').data[0]")
    assert lr["name"] == "lr" and len(lr["x"]) == len(lr["y"]) > 0
    shot(page, "ui_model_page")
    # Offline: every request the page made (Plotly included) went to this app.
    assert all(r.startswith((url, "data:", "blob:")) for r in page.requests), page.requests
    assert any("/vendor/plotly.min.js" in r for r in page.requests)
    assert not page.js_errors


def test_ui_a_flat_series_gets_a_narrow_axis_not_plus_minus_one(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "flat", status="Running", dataset_id=ds)
    fake.metrics = lambda job_id, since=0: {
        "status": "Running", "progress": 0.1, "eta": 30, "iteration": 4, "iters_per_epoch": 4,
        "series": {"train/loss": [[i, 1.0 / i] for i in range(max(1, since), 5)],
                   "val/dice": [[4, 0.98]] if since <= 4 else []}}  # accuracy has its fixed 0-100 % axis
    page = browser_page
    page.goto(f"{url}/models/{m}")
    plot = "document.querySelector('.chart[data-chart=\"dice\"] .plot')"
    page.wait_for_function(f"{plot} && {plot}._fullLayout && {plot}._fullLayout.yaxis")
    low, high = page.evaluate(f"{plot}._fullLayout.yaxis.range")
    assert low < 0.98 < high and high - low < 0.2, (low, high)  # Plotly alone shows 0–2
    loss = "document.querySelector('.chart[data-chart=\"loss\"] .plot')._fullLayout.yaxis.range"
    low, high = page.evaluate(loss)
    assert low <= 0.25 and high >= 1.0  # a series that moves keeps Plotly's autorange
    assert not page.js_errors


def test_ui_a_clone_with_a_non_default_lr_policy_shows_its_options(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "exp model", dataset_id=ds)
    clone = fake.clone
    fake.clone = lambda job_id: dict(clone(job_id), lr_policy="exp", lr_gamma=0.95)
    page = browser_page
    page.goto(f"{url}/models/{m}/clone")
    page.wait_for_function("!document.getElementById('advanced-lr').hidden")
    assert page.is_checked("#show-advanced-lr") and page.input_value("#lr_policy") == "exp"
    page.goto(f"{url}/models/new")
    assert not page.is_checked("#show-advanced-lr") and page.is_hidden("#advanced-lr")
    assert not page.js_errors


def test_ui_the_evaluation_appears_when_it_is_stored_after_training(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "finished", status="Done", dataset_id=ds)
    stored = fake.evaluation
    ready = {"now": False}
    fake.evaluation = lambda job_id: stored(job_id) if ready["now"] else None
    page = browser_page
    page.goto(f"{url}/models/{m}")
    assert page.is_visible("#evaluation-pending")
    ready["now"] = True
    page.wait_for_selector("#evaluation table", timeout=15000)
    assert page.query_selector("#evaluation-pending") is None
    assert not page.js_errors


def test_ui_previous_network_offers_only_its_own_snapshots(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    a = fake.add_job("model", "model a", dataset_id=ds)
    b = fake.add_job("model", "model b", dataset_id=ds)
    page = browser_page
    page.goto(f"{url}/models/new")
    page.click("[data-net-tab=previous]")
    visible = "[...document.querySelectorAll('#previous_snapshot option')].filter(o => !o.hidden).map(o => o.value)"
    assert page.evaluate(visible) == [""]
    page.check(f"input[name=previous_network][value='{a}']")
    assert page.evaluate(visible) == ["", f"{a}:4"]
    page.select_option("#previous_snapshot", f"{a}:4")
    page.check(f"input[name=previous_network][value='{b}']")
    assert page.evaluate(visible) == ["", f"{b}:4"] and page.input_value("#previous_snapshot") == ""
    assert not page.js_errors


def test_ui_inference_opacity_and_mask_sliders_recomposite(browser_page, fake_site):
    url, fake, _ = fake_site
    m = fake.add_job("model", "m", dataset_id=fake.add_job("dataset", "d"))
    page = browser_page
    page.goto(f"{url}/models/{m}/infer")
    page.select_option("#record", "00000001")
    page.click("#test-record")
    page.wait_for_selector(".overlay-view[data-ready='1']")
    pixel = "(() => { const c = document.querySelector('.overlay-canvas'); return Array.from(c.getContext('2d').getImageData(17, 16, 1, 1).data); })()"
    before = page.evaluate(pixel)
    page.fill(".ov-opacity", "100")
    page.dispatch_event(".ov-opacity", "input")
    after = page.evaluate(pixel)
    assert page.inner_text(".ov-opacity-value") == "100%"
    # At full opacity the predicted LV pixel is exactly the palette's red.
    assert after[:3] == [255, 0, 0] and before != after
    page.fill(".ov-opacity", "0")
    page.dispatch_event(".ov-opacity", "input")
    assert page.evaluate(pixel)[0] == page.evaluate(pixel)[1]  # gray image shows through
    # The mask slider darkens what was not segmented (DIGITS' mask), leaving the prediction alone.
    page.fill(".ov-opacity", "100")
    page.dispatch_event(".ov-opacity", "input")
    page.uncheck(".ov-label")  # (11, 16): inside the bright labelled disc, just outside the prediction
    background = pixel.replace("17, 16", "11, 16")
    gray = page.evaluate(background)
    assert gray[0] == gray[1] == gray[2] > 20 and page.inner_text(".ov-mask-value") == "0%"
    page.fill(".ov-mask", "50")
    page.dispatch_event(".ov-mask", "input")
    assert page.inner_text(".ov-mask-value") == "50%"
    assert abs(page.evaluate(background)[0] - gray[0] / 2) <= 1
    page.fill(".ov-mask", "100")
    page.dispatch_event(".ov-mask", "input")
    assert page.evaluate(background)[:3] == [0, 0, 0] and page.evaluate(pixel)[:3] == [255, 0, 0]
    page.fill(".ov-width", "3")
    page.dispatch_event(".ov-width", "input")
    assert page.inner_text(".ov-width-value") == "3 px"
    for control, value in ((".ov-opacity", "45"), (".ov-mask", "60")):  # a readable screenshot
        page.fill(control, value)
        page.dispatch_event(control, "input")
    page.check(".ov-label")
    shot(page, "ui_inference")
    assert not page.js_errors


def test_ui_lr_preview_follows_caffe_step_policy(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")  # 4 training records
    page = browser_page
    page.goto(f"{url}/models/new?dataset={ds}")
    page.fill("#batch_size", "1")
    page.fill("#epochs", "25")  # 4 iterations per epoch -> max_iter 100
    page.check("#show-advanced-lr")
    page.select_option("#lr_policy", "step")
    page.fill("#lr_step_size", "33")  # DIGITS: stepsize = ceil(33 * 100 / 100) = 33
    page.fill("#lr_gamma", "0.5")
    page.fill("#base_lr", "0.1")
    page.dispatch_event("#base_lr", "input")
    rates = json.loads(page.eval_on_selector("#lr-chart", "c => c.dataset.rates"))
    assert len(rates) == 100
    assert rates[0] == pytest.approx(0.1) and rates[32] == pytest.approx(0.1)
    assert rates[33] == pytest.approx(0.05) and rates[66] == pytest.approx(0.025) and rates[99] == pytest.approx(0.0125)
    drawn = page.evaluate("(() => { const t = document.querySelector('#lr-chart').data[0]; return [t.x, t.y]; })()")
    assert drawn[1] == pytest.approx(rates) and drawn[0][4] == pytest.approx(1.0)  # Plotly's trace, x in epochs
    # multistep at 50% and 85%: Caffe moves one step per call, at iterations 50 and 85.
    page.select_option("#lr_policy", "multistep")
    page.fill("#lr_step_values", "50,85")
    page.dispatch_event("#lr_step_values", "input")
    rates = json.loads(page.eval_on_selector("#lr-chart", "c => c.dataset.rates"))
    assert rates[49] == pytest.approx(0.1) and rates[50] == pytest.approx(0.05) and rates[85] == pytest.approx(0.025)
    assert page.is_hidden("#field-lr_power")
    shot(page, "ui_model_form")
    assert not page.js_errors


def test_ui_pretrained_network_fills_the_form(browser_page, fake_site):
    """Picking a pretrained model makes it the network source, shows its network and the weights for
    the dataset's channels; Customize puts an uploaded model's network in the editor and its weights
    in "Pretrained model(s)"."""
    import numpy as np
    from caffeseg.jobs import pretrained
    from web_helpers import write_weights
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")  # 1-channel features: the gray variants are used
    store = fake.root / "pretrained"
    store.mkdir()
    gray = store / "fcn8s-heavy-pascal-gray.caffemodel"
    gray.write_bytes(b"weights")
    net = 'name: "mine"\nlayer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }\n'
    write_weights(store / "w.caffemodel", {"conv": [np.ones((2, 1, 3, 3), np.float32)]})
    mine = pretrained.save_upload(store, "mine", net, store / "w.caffemodel")
    page = browser_page
    page.goto(f"{url}/models/new?dataset={ds}")
    page.click("[data-net-tab=pretrained]")
    page.check("input[name=pretrained_network][value='fcn8s-heavy-pascal']")
    assert page.input_value("#network_source") == "pretrained"
    summary = page.eval_on_selector("#pretrained-summary", "e => Object.assign({text: e.textContent}, e.dataset)")
    assert summary["network"] == "fcn_8s" and summary["weights"] == str(gray) and summary["ready"] == "1"
    assert "prototxt/fcn_8s.prototxt" in summary["text"]
    vgg = page.inner_text("tr[data-pretrained='VGG16'] .pretrained-status")
    assert "caffeseg surgery vgg16-fcn8s" in vgg and "--gray" in vgg  # not made: the commands, not a fake
    page.check("input[name=pretrained_network][value='VGG16']")
    assert page.eval_on_selector("#pretrained-summary", "e => e.dataset.ready") == "0"
    shot(page, "ui_pretrained_networks")
    page.click(f"tr[data-pretrained='{mine['id']}'] .customize-pretrained")
    page.wait_for_function("document.querySelector('#network_source').value === 'custom'")
    assert page.input_value("#custom_network") == net
    assert page.input_value("#pretrained_model") == mine["weights"]
    assert not page.js_errors


def test_ui_pretrained_tab_follows_a_preparation(browser_page, fake_site):
    """While a known model is prepared the tab shows its download progress without a reload and
    disables Prepare; when the preparing process is gone the page reloads and says interrupted."""
    import socket
    import subprocess
    import sys
    url, fake, _ = fake_site
    store = fake.root / "pretrained"
    store.mkdir(parents=True)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    state = {"name": "bvlc_alexnet", "variant": "gray", "state": "running", "phase": "download",
             "done": 1 << 20, "total": 4 << 20, "pid": worker.pid, "host": socket.gethostname()}
    path = store / ".prepare-bvlc_alexnet.json"
    try:
        path.write_text(json.dumps(state))
        page = browser_page
        page.goto(f"{url}/?tab=pretrained")
        row = "[data-prepare='bvlc_alexnet']"
        assert page.get_attribute(row, "data-state") == "running"
        assert page.inner_text(f"{row} .prepare-progress") == "1.0 MB of 4.0 MB"
        assert page.is_disabled("form[action='/pretrained/known/bvlc_alexnet/prepare'] button")
        assert page.is_enabled("form[action='/pretrained/known/VGG16/prepare'] button")
        page.evaluate("window.__marker = 1")
        path.write_text(json.dumps(dict(state, done=3 << 20)))
        page.wait_for_function(f"document.querySelector(\"{row} .prepare-progress\").textContent === '3.0 MB of 4.0 MB'")
        assert page.evaluate("window.__marker") == 1  # updated in place
    finally:
        worker.kill()
        worker.wait()
    page.wait_for_function(f"document.querySelector(\"{row}\") && "
                           f"document.querySelector(\"{row}\").dataset.state === 'interrupted'")
    assert page.evaluate("window.__marker === undefined")  # the page was reloaded
    assert "prepare again" in page.inner_text(row)
    assert page.is_enabled("form[action='/pretrained/known/bvlc_alexnet/prepare'] button")
    shot(page, "ui_pretrained_preparation")
    assert not page.js_errors


def test_ui_bulk_actions_need_a_selection_and_name_what_they_do(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    fake.add_job("model", "one", dataset_id=ds)
    page = browser_page
    dialogs = []

    def answer(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", answer)
    page.goto(f"{url}/?tab=model")
    panel = "#panel-model"
    page.click(f"{panel} button[data-confirm]")
    assert page.inner_text(f"{panel} .bulk-note") == "Select at least one job first."
    assert dialogs == []
    page.check(f"{panel} input[name=job_ids]")
    page.select_option(f"{panel} select[name=action]", "delete")
    page.click(f"{panel} button[data-confirm]")
    assert dialogs == ["Delete 1 selected job and their files?"]
    assert page.query_selector(f"{panel} .bulk-note") is None
    assert len(fake.jobs_) == 2  # dismissed: nothing deleted
    assert not page.js_errors


def test_ui_custom_network_editor_uncomments_a_layer(browser_page, fake_site):
    url, fake, _ = fake_site
    page = browser_page
    page.goto(f"{url}/models/new")
    page.click("[data-net-tab=custom]")
    page.fill("#custom_network", "name: 'n'\n# layer {\n#   name: 'dice'\n# }")
    page.eval_on_selector("#custom_network", "e => { e.focus(); e.setSelectionRange(e.value.indexOf('# layer'), e.value.length); }")
    page.keyboard.press("Control+/")
    assert page.input_value("#custom_network") == "name: 'n'\nlayer {\n  name: 'dice'\n}"
    assert page.inner_text(".editor .gutter").split() == ["1", "2", "3", "4"]
    assert page.input_value("#network_source") == "custom"
    assert not page.js_errors


def test_ui_visualize_draws_shapes_or_selects_the_error_line(browser_page, fake_site):
    url, fake, _ = fake_site
    page = browser_page
    page.goto(f"{url}/models/new")
    page.click("[data-net-tab=custom]")
    page.fill("#custom_network", 'name: "n"\nlayer {\n  name: "a"\n  typo: 1\n}\n')
    page.click("#visualize")
    page.wait_for_selector(".net-error")
    assert page.inner_text(".net-error").startswith("custom network, line 4") and "typo" in page.inner_text(".net-error")
    selected = page.eval_on_selector("#custom_network", "e => e.value.substring(e.selectionStart, e.selectionEnd)")
    assert selected == "  typo: 1"  # the offending line is selected in the editor
    page.fill("#custom_network", 'name: "n"\nlayer { name: "d" type: "Data" top: "data" top: "label" }\n'
                                 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                                 'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    page.click("#visualize")
    page.wait_for_selector(".netviz")
    assert "c (Convolution)" in page.inner_text(".netviz") and "1 × 2 × 30 × 30" in page.inner_text(".netviz")
    shot(page, "ui_visualize")
    assert not page.js_errors


def test_ui_path_autocomplete_and_dataset_form(browser_page, fake_site):
    url, fake, data = fake_site
    (data / "sunny" / "contours").mkdir()
    page = browser_page
    page.goto(f"{url}/datasets/new/sunnybrook")
    page.fill("#image_folder", str(data / "sunny") + "/")
    page.wait_for_selector("#field-image_folder .path-suggest li:has-text('contours')")
    items = page.eval_on_selector_all("#field-image_folder .path-suggest li", "els => els.map(e => e.textContent)")
    assert items == [str(data.resolve() / "sunny" / "contours") + "/", str(data.resolve() / "sunny" / "images") + "/"]
    page.click("#field-image_folder .path-suggest li:nth-child(2)")
    page.fill("#contour_folder", str(data / "sunny" / "contours"))
    page.fill("#dataset_name", "browser-ds")
    page.click("button[type=submit]")
    page.wait_for_url("**/datasets/*")
    assert "browser-ds" in page.inner_text("h1")
    shot(page, "ui_dataset_page")
    assert not page.js_errors


# -- the whole product ---------------------------------------------------------------------

TINY_FCN = """name: "tiny_fcn"
layer { name: "data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 2 } }
layer { name: "label" type: "Data" top: "label" include { stage: "train" } data_param { batch_size: 2 } }
layer { name: "data" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 2 } }
layer { name: "label" type: "Data" top: "label" include { stage: "val" } data_param { batch_size: 2 } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 4 stride: 4 } }
layer { name: "conv1" type: "Convolution" bottom: "pool" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score_small" type: "Convolution" bottom: "conv1" top: "score_small"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "upscore" type: "Deconvolution" bottom: "score_small" top: "score"
  param { lr_mult: 0 } convolution_param { num_output: 2 group: 2 kernel_size: 4 stride: 4 bias_term: false
  weight_filler { type: "bilinear" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  exclude { stage: "deploy" } loss_param { normalize: true } }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy" exclude { stage: "deploy" } }
"""


def test_full_workflow(request, tmp_path):
    """Phantom dataset → slim model trained one epoch → live chart → inference → opacity slider."""
    browser_page = request.getfixturevalue("browser_page")
    image_folder, contour_folder = request.getfixturevalue("phantom_release")
    from caffeseg.web import create_app

    data = tmp_path / "data"
    app = create_app({"DATA_DIR": str(data), "DATA_ROOTS": [str(data), str(image_folder.parent)],
                      "POLL_INTERVAL_S": 0.5})
    server = LiveServer(app)
    page = browser_page
    try:
        page.goto(f"{server.url}/")
        page.hover("text=New Dataset ▾")
        page.hover(".menu-sub >> nth=0")
        page.click("text=Sunnybrook LV Segmentation")
        path_fields = page.eval_on_selector_all("[data-path-complete]", "els => els.map(e => e.id)")
        page.fill(f"#{path_fields[0]}", str(image_folder))
        page.fill(f"#{path_fields[1]}", str(contour_folder))
        page.fill("#dataset_name", "e2e phantom")
        page.fill("#encoder_threads", "1")
        shot(page, "e2e_1_dataset_form")
        page.click("button[type=submit]")
        page.wait_for_url("**/datasets/*")
        dataset_url = page.url
        page.wait_for_selector(".badge:has-text('Done')", timeout=120_000)
        shot(page, "e2e_2_dataset_page")
        page.click("text=Explore")
        page.wait_for_selector(".record img")
        page.wait_for_function("[...document.querySelectorAll('.record img')].every(i => i.complete)")
        broken = page.eval_on_selector_all(".record img", "imgs => imgs.filter(i => !i.naturalWidth).map(i => i.alt)")
        assert broken == []  # every feature and label rendered (LMDB read concurrently)
        shot(page, "e2e_3_explore")

        page.goto(dataset_url)
        page.click("text=New model on this dataset")
        page.wait_for_load_state("load")
        page.click("[data-net-tab=custom]")
        page.fill("#custom_network", TINY_FCN)
        page.fill("#epochs", "1")
        page.fill("#batch_size", "2")
        page.fill("#base_lr", "0.001")
        page.check("input[name=mean_subtraction][value=none]")
        page.fill("#model_name", "e2e tiny fcn")
        page.click("#visualize")
        page.wait_for_selector(".netviz, .net-error")
        shot(page, "e2e_4_model_form")
        page.click("#create-model")
        page.wait_for_url("**/models/*")
        page.wait_for_function(f"{PLOTLY_POINTS} > 0", timeout=180_000)  # Plotly traces grow
        shot(page, "e2e_5_training")
        page.wait_for_function(
            "['Done', 'Error'].includes((document.querySelector('#job-status .badge') || {}).textContent)",
            timeout=180_000)
        page.wait_for_selector("#snapshots td a", timeout=30_000)  # the page reloads when training ends
        assert "Done" in page.inner_text("#job-status")
        shot(page, "e2e_6_model_done")

        page.click("text=Test the model")
        page.select_option("#record", index=1)
        page.check("#visualize")
        page.click("#test-record")
        page.wait_for_selector(".overlay-view[data-ready='1']", timeout=60_000)
        assert "Layers: activations and weights" in page.inner_text("main")
        assert page.locator("text=conv1").count() >= 1
        page.fill(".ov-opacity", "90")
        page.dispatch_event(".ov-opacity", "input")
        assert page.inner_text(".ov-opacity-value") == "90%"
        page.fill(".ov-mask", "70")
        page.dispatch_event(".ov-mask", "input")
        assert page.inner_text(".ov-mask-value") == "70%"
        shot(page, "e2e_7_inference")
        model_url = page.url.split("/inference/")[0]

        # An uploaded DICOM slice goes through the same preprocessing; no label, so no Dice.
        page.goto(model_url + "/infer")
        page.set_input_files("#image", str(next(image_folder.rglob("*.dcm"))))
        page.click("button[value=image]")
        page.wait_for_selector(".overlay-view[data-ready='1']", timeout=60_000)
        assert "upload" in page.inner_text("h1")

        # The model archive downloads; the home page lists the model with its metrics.
        archive = page.request.get(model_url + "/download")
        assert archive.status == 200 and archive.body()[:2] == b"\x1f\x8b"
        page.goto(f"{server.url}/?tab=model")
        assert "e2e tiny fcn" in page.inner_text("#panel-model")
        assert page.locator("#panel-model svg.spark polyline").count() >= 1
        shot(page, "e2e_8_home")
        assert not page.js_errors
    finally:
        server.stop()
        stop = getattr(app.extensions["caffeseg_backend"].service, "_stop", None)
        if stop is not None:
            stop.set()  # end the worker thread the app started


def test_ui_label_outline_is_a_visible_colour_with_a_visible_swatch(browser_page, fake_site):
    """The label outline was white: invisible on the bright LV, and its legend swatch looked
    empty. It is now a colour far from every prediction colour, shown as a coloured ring."""
    url, fake, _ = fake_site
    m = fake.add_job("model", "m", dataset_id=fake.add_job("dataset", "d"))
    page = browser_page
    page.goto(f"{url}/models/{m}/infer/record/00000001")
    page.wait_for_selector(".overlay-view[data-ready='1']")
    # (11, 16): on the label's edge, outside the prediction (the fake's prediction is shifted by 1)
    at = "Array.from(document.querySelector('.overlay-canvas').getContext('2d').getImageData(11, 16, 1, 1).data).slice(0, 3)"
    swatch = "getComputedStyle(document.querySelector('.ov-legend .swatch-outline')).borderTopColor"
    for scheme in ("dataset", "false", "gray"):
        page.select_option(".ov-colormap", scheme)
        outline = page.evaluate(at)
        assert outline != [255, 255, 255] and max(outline) >= 200
        assert page.evaluate(swatch) == "rgb(%d, %d, %d)" % tuple(outline)
        predicted = page.evaluate(at.replace("11, 16", "22, 16"))  # the prediction's own outline
        assert sum((a - b) ** 2 for a, b in zip(outline, predicted)) ** 0.5 > 150, (scheme, outline, predicted)
    width = page.evaluate("getComputedStyle(document.querySelector('.ov-legend .swatch-outline')).borderTopWidth")
    assert float(width.rstrip("px")) >= 2
    page.uncheck(".ov-label")
    assert page.evaluate(at) != outline
    page.check(".ov-label")
    shot(page, "ui_label_outline")
    assert not page.js_errors


def test_ui_compare_lists_records_once_a_model_is_ticked(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m1, m2 = fake.add_job("model", "first", dataset_id=ds), fake.add_job("model", "second", dataset_id=ds)
    page = browser_page
    page.goto(f"{url}/compare")
    options = "Array.from(document.querySelectorAll('#record option')).map(o => o.value)"
    assert page.evaluate(options) == [""]
    page.click("button[type=submit]")
    assert "tick at least one model" in page.inner_text(".flash-error")
    page.check(f"input[name=models][value='{m1}']")
    page.wait_for_function(f"{options}.length === 3")
    assert page.evaluate(options) == ["", "00000000", "00000001"]
    assert "validation set" in page.inner_text("#record-note")
    page.select_option("#record", "00000001")
    page.check(f"input[name=models][value='{m2}']")
    page.wait_for_function("document.querySelector('#compare-form').dataset.recordsReady === '2'")
    assert page.evaluate("document.querySelector('#record').value") == "00000001"  # kept
    page.click("button[type=submit]")
    page.wait_for_selector(".compare-grid .overlay-view[data-ready='1']")
    assert page.locator(".compare-grid .overlay-view").count() == 2
    shot(page, "ui_compare")
    assert not page.js_errors


def test_ui_model_page_follows_progress_snapshots_and_log_without_reload(browser_page, fake_site):
    """Elapsed ticks, ETA, snapshot rows, Download model and the log follow the live poll; no reload."""
    import time
    url, fake, _ = fake_site
    now = time.time()
    m = fake.add_job("model", "live", status="Running", snapshots=[], log="", eta=None,
                     history=[{"status": "Waiting", "time": now - 50}, {"status": "Running", "time": now - 20}])
    page = browser_page
    page.goto(f"{url}/models/{m}")
    page.evaluate("window.__marker = 42")
    assert page.inner_text("#job-log") == "No log yet."
    assert page.evaluate("document.getElementById('download-btn').tagName") == "SPAN"
    page.wait_for_function("parseInt(document.getElementById('elapsed').textContent) >= 22")  # it ticks
    fake.jobs_[m].update(eta=75, log="training iterations 1 to 40\nsnapshot at iteration 4\n",
                         snapshots=[{"iteration": 4, "epoch": 1.0, "file": "snapshot_iter_4.caffemodel", "size": 7}])
    page.wait_for_function("document.querySelector('#snapshots tbody').textContent.includes('model archive')")
    page.wait_for_function("document.getElementById('eta-text').textContent === 'ETA 1m 15s'")
    page.wait_for_function("document.getElementById('job-log').textContent.includes('snapshot at iteration 4')")
    assert page.evaluate("document.getElementById('download-btn').getAttribute('href')") == f"/models/{m}/download"
    assert page.evaluate("window.__marker") == 42
    shot(page, "ui_model_page_live")
    assert not page.js_errors


def test_ui_new_model_loads_plotly_only_when_the_lr_preview_opens(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    page = browser_page
    page.goto(f"{url}/models/new?dataset={ds}")
    assert not any("plotly" in r for r in page.requests)  # the 4.8 MB bundle is not part of the page
    assert page.evaluate("typeof window.Plotly") == "undefined"
    page.check("#show-advanced-lr")
    page.wait_for_selector("#lr_policy", state="visible")
    page.wait_for_function("document.querySelector('#lr-chart').data && document.querySelector('#lr-chart .main-svg')")
    assert any("/vendor/plotly.min.js" in r for r in page.requests)
    assert len(page.evaluate("document.querySelector('#lr-chart').data[0].y")) == 30 * 1  # 4 records / 16 → 1 per epoch
    page.uncheck("#show-advanced-lr")
    page.check("#show-advanced-lr")  # a second time: at once, no second download
    assert page.is_visible("#lr_policy")
    assert sum("/vendor/plotly.min.js" in r for r in page.requests) == 1
    assert not page.js_errors


def test_ui_lr_policy_switch_uses_each_policys_default_unless_edited(browser_page, fake_site):
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    page = browser_page
    page.goto(f"{url}/models/new?dataset={ds}")
    page.fill("#batch_size", "1")
    page.fill("#epochs", "25")  # max_iter 100
    page.check("#show-advanced-lr")
    page.select_option("#lr_policy", "exp")
    assert page.input_value("#lr_gamma") == "0.95"  # DIGITS' exp default, not the step policies' 0.1
    rates = json.loads(page.eval_on_selector("#lr-chart", "c => c.dataset.rates"))
    assert rates[4] == pytest.approx(0.01 * 0.95 ** 4) and rates[99] > 0.01 * 0.95 ** 100  # no collapse in epoch 1
    page.select_option("#lr_policy", "poly")
    assert page.input_value("#lr_power") == "3"
    page.select_option("#lr_policy", "sigmoid")
    assert page.input_value("#lr_gamma") == "0.1" and page.input_value("#lr_step_size") == "50"
    page.fill("#lr_gamma", "0.3")  # the user's own value stays
    page.select_option("#lr_policy", "exp")
    assert page.input_value("#lr_gamma") == "0.3"
    assert not page.js_errors


def test_ui_dataset_choice_clears_its_error_and_updates_the_lr_preview(browser_page, fake_site):
    url, fake, _ = fake_site
    small = fake.add_job("dataset", "small")  # 4 training records
    big = fake.add_job("dataset", "big", summary={"train_count": 64, "val_count": 8, "classes": ["bg", "lv"]})
    fake.add_job("dataset", "failed", status="Error", summary={"train_count": None, "classes": []})
    page = browser_page
    page.goto(f"{url}/models/new")
    assert "failed" not in page.inner_text("#dataset")
    page.click("#create-model")  # no dataset, no name: the server answers with errors beside the fields
    page.wait_for_selector("#field-dataset .field-error")
    page.fill("#batch_size", "16")
    page.check("#show-advanced-lr")
    page.wait_for_selector("#lr_policy", state="visible")
    page.select_option("#dataset", big)
    assert page.query_selector("#field-dataset .field-error") is None  # the stale "choose a dataset" goes
    assert "4 per epoch" in page.inner_text("#lr-preview-info")
    page.select_option("#dataset", small)
    assert "1 per epoch" in page.inner_text("#lr-preview-info")
    page.select_option("#dataset", "")
    assert "assuming 100 training records" in page.inner_text("#lr-preview-info")
    assert "7 per epoch" in page.inner_text("#lr-preview-info")
    assert not page.js_errors


def test_ui_solver_and_backend_choices_are_not_cut_off(browser_page, fake_site):
    url, fake, _ = fake_site
    page = browser_page
    page.goto(f"{url}/models/new")
    for select in ("#solver_type", "#backend"):
        # the widest option label (canvas text width in the select's font) + the arrow fits the box
        widest, box = page.eval_on_selector(select, """s => {
            const ctx = document.createElement('canvas').getContext('2d');
            ctx.font = getComputedStyle(s).font;
            return [Math.max(...[...s.options].map(o => ctx.measureText(o.text).width)), s.clientWidth]; }""")
        assert widest + 36 <= box, (select, widest, box)
    assert not page.js_errors


def test_ui_custom_network_errors_read_cleanly(browser_page, fake_site):
    url, fake, _ = fake_site
    page = browser_page
    page.goto(f"{url}/models/new")
    page.click("[data-net-tab=custom]")
    page.fill("#custom_network", 'name: "bad2"\n'
                                 'layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } }\n'
                                 'layer { name: "conv1" type: "Convolution" bottom: "dta" top: "conv1" '
                                 'convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }\n')
    page.click("#visualize")
    page.wait_for_selector(".net-error")
    text = page.inner_text(".net-error")
    assert "/tmp" not in text and ".prototxt" not in text, text
    assert "custom network, line 3" in text and "unknown bottom blob 'dta'" in text
    selected = page.eval_on_selector("#custom_network", "e => e.value.substring(e.selectionStart, e.selectionEnd)")
    assert selected.startswith('layer { name: "conv1"')  # the refused layer is selected in the editor
    page.fill("#custom_network", 'name: "bad"\n\n\n\nlayer { layer { } }\n')
    page.click("#visualize")
    page.wait_for_function("document.querySelector('.net-error')?.innerText.includes('line 5')")
    text = page.inner_text(".net-error")
    assert text.startswith("custom network, line 5, column ") and text.count("line 5") == 1, text
    assert not page.js_errors


def test_ui_live_charts_keep_a_val_point_written_after_its_train_row(browser_page, fake_site):
    # The runner writes train row N, then validates (longer than a poll) and writes val row N.
    url, fake, _ = fake_site
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "slow-val", status="Running", dataset_id=ds)
    written = {"polls": 0}

    def metrics(job_id, since=0):
        written["polls"] += 1
        k = written["polls"]  # poll k sees train rows 1..2k; the val row of iteration 2j comes one poll late
        rows = {"train/loss": [[i, 1.0 / i] for i in range(1, min(2 * k, 10) + 1)],
                "val/loss": [[2 * j, 0.5 / j] for j in range(1, min(k - 1, 5) + 1)]}
        series = {name: [p for p in pts if p[0] >= since] for name, pts in rows.items()}
        return {"status": "Running", "progress": min(k / 5, 1), "iteration": min(2 * k, 10), "iters_per_epoch": 2,
                "series": series}

    fake.metrics = metrics
    page = browser_page
    page.goto(f"{url}/models/{m}")
    val_x = ("(() => { const d = document.querySelector('.chart[data-chart=\"loss\"] .plot');"
             " const t = d && d.data && d.data.find(t => t.name === 'val/loss'); return t ? t.x.length : 0; })()")
    page.wait_for_function(f"{val_x} >= 5", timeout=30000)
    traces = page.evaluate("Object.fromEntries(document.querySelector('.chart[data-chart=\"loss\"] .plot')"
                           ".data.map(t => [t.name, t.x]))")
    assert traces["val/loss"] == [1, 2, 3, 4, 5]  # epochs of iterations 2, 4, ..., 10: none skipped
    assert traces["train/loss"] == [i / 2 for i in range(1, 11)]  # and no train point drawn twice
    assert not page.js_errors
