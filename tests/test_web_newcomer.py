"""Issue 21 (the lab walked as a newcomer) through Flask's test client on the fake backend."""
from __future__ import annotations

import pytest

from caffeseg.jobs import resources
from test_web_pages import env, model_form  # noqa: F401  (pytest fixture)


# -- item 7: the product's own Python layer file ---------------------------------------------------

@pytest.mark.parametrize("given", ["digits_python_layers.py", "python_layers/digits_python_layers.py",
                                   resources.python_layer_file("digits_python_layers")])
def test_the_products_own_python_layer_file_is_accepted_by_name(env, given):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    resp = client.post("/models/new", data=model_form(ds, python_layer_server_file=given))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    options = [c for c in fake.calls if c[0] == "create_model"][0][1]
    assert options["python_layer_server_file"] == resources.python_layer_file("digits_python_layers")


@pytest.mark.parametrize("given", ["/etc/passwd", "python_layers/../../etc/passwd.py", "other/digits_python_layers.py",
                                   "nonexistent_layers.py"])
def test_other_python_layer_files_outside_the_data_folders_are_still_refused(env, given):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    resp = client.post("/models/new", data=model_form(ds, python_layer_server_file=given))
    assert resp.status_code == 400
    assert not [c for c in fake.calls if c[0] == "create_model"]


def test_the_form_says_the_lab_layer_needs_no_file(env):
    app, client, fake, _ = env
    html = client.get("/models/new").get_data(as_text=True)
    assert "digits_python_layers.py (Dice, DiceLoss, SegmentationMetrics) is supplied to every job" in html
    assert "needs nothing here" in html


# -- item 14: the dataset form and page ------------------------------------------------------------

def test_dataset_form_is_prefilled_with_the_sample_when_it_exists(env):
    app, client, fake, data = env
    html = client.get("/datasets/new/sunnybrook").get_data(as_text=True)
    assert 'id="sample-note"' not in html
    (data / "sample" / "challenge_training").mkdir(parents=True)
    (data / "sample" / "TrainingDataContours").mkdir()
    html = client.get("/datasets/new/sunnybrook").get_data(as_text=True)
    assert 'id="sample-note"' in html
    assert f'value="{data / "sample" / "challenge_training"}"' in html
    assert f'value="{data / "sample" / "TrainingDataContours"}"' in html


def test_dataset_form_has_no_encoder_batch_size_and_clone_keeps_the_build_options(env):
    app, client, fake, _ = env
    assert 'name="encoder_batch_size"' not in client.get("/datasets/new/sunnybrook").get_data(as_text=True)
    from caffeseg.web import job_options
    restored = job_options.dataset_form_values(
        {"plugin": "sunnybrook", "values": {"val_percent": 10}, "name": "d (clone)",
         "build": {"encoding": "png", "label_encoding": "png", "workers": 1, "enforce_same_shape": False}},
        {"group_name": "lab"})
    assert restored["options"] == {"dataset_name": "d (clone)", "group_name": "lab", "encoding": "png",
                                   "label_encoding": "png", "encoder_threads": 1, "enforce_same_shape": False}


def test_dataset_page_shows_options_by_label_and_why_delete_is_disabled(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds", plugin="sunnybrook")
    fake.jobs_[ds]["info"]["form_values"] = {"channel_conversion": "L", "val_percent": 10, "split_by": "patient"}
    fake.add_job("model", "fcn on it", dataset_id=ds)
    html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert "<dt>Channel conversion</dt><dd>Grayscale (1 channel)</dd>" in html
    assert "channel_conversion" not in html.split('id="dataset-options"')[1].split("</dl>")[0]
    assert "Cannot be deleted: used by 1 model (fcn on it); delete them first." in html


# -- item 15: the pretrained tab and the API reference ---------------------------------------------

def test_pretrained_tab_says_what_is_done_in_words_and_the_download_size(env):
    app, client, fake, _ = env
    html = client.get("/?tab=pretrained").get_data(as_text=True)
    assert "caffeseg.jobs.surgery" not in html and "jobs.surgery" not in html and "gray=True" not in html
    assert "made into FCN-AlexNet weights" in html
    assert "download: about 232.7 MB" in html  # bvlc_alexnet: 61.0 M parameters x 4 bytes


def test_api_reference_renders_code_enums_and_form_help(env):
    import re
    app, client, fake, _ = env
    html = client.get("/api/").get_data(as_text=True)
    text_only = re.sub(r"<[^>]+>", "", html)
    assert "`" not in text_only  # markdown code spans became <code>
    assert "<code>X-Requested-With</code>" in html
    assert "one of , " not in text_only
    assert 'one of "" (empty: the default), <code>engine</code>, <code>pycaffe</code>, <code>auto</code>' in html
    # a body field the spec leaves undescribed takes the form's help text
    epochs_row = re.search(r'<td class="mono">epochs</td>.*?</tr>', html, re.S).group(0)
    assert "Training epochs: How many passes over the training set." in epochs_row


def test_openapi_yaml_is_shown_in_the_browser_and_downloadable(env):
    app, client, fake, _ = env
    shown = client.get("/api/openapi.yaml")
    assert shown.mimetype == "text/plain" and "Content-Disposition" not in shown.headers
    assert shown.get_data(as_text=True).startswith("openapi:")
    saved = client.get("/api/openapi.yaml?download=1")
    assert saved.headers["Content-Disposition"] == "attachment; filename=openapi.yaml"
    assert saved.get_data() == shown.get_data()


# -- item 2, on the page: gray weights on an RGB dataset -------------------------------------------

def test_new_model_page_shows_the_channel_advice_once_beside_the_pretrained_field(tmp_path):
    """The real service refuses gray weights on a 3-channel dataset; the form shows its advice
    (the surgery of the direction that fits, with a concrete output file, and every other way
    out) once, beside the pretrained-model field, and the banner only points at it."""
    import html as html_mod
    import re

    import numpy as np

    from caffeseg.engine.blobproto import array_to_blobproto
    from caffeseg.engine.proto import caffe_pb2
    from test_web_integration import TINY_NET
    from tests.jobs_fixtures import write_dataset_json
    from caffeseg.web import create_app
    from web_helpers import write_lmdb_dataset
    data, built = tmp_path / "data", tmp_path / "built"
    data.mkdir()
    write_lmdb_dataset(built, {"train": 4, "val": 2}, side=16, scale=16, box=(4, 9))
    write_dataset_json(str(built), {"train": 4, "val": 2}, [3, 16, 16])  # an RGB dataset
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="score", type="Convolution")
    layer.blobs.append(array_to_blobproto(np.zeros((2, 1, 3, 3), np.float32)))  # gray weights
    layer.blobs.append(array_to_blobproto(np.zeros(2, np.float32)))
    weights = data / "fcn_gray.caffemodel"
    weights.write_bytes(net.SerializeToString())
    app = create_app({"DATA_DIR": str(data), "DATA_ROOTS": [str(data)], "WTF_CSRF_ENABLED": False, "START_WORKER": False})
    ds = app.extensions["caffeseg_backend"].service.import_dataset(str(built), "rgb")
    resp = app.test_client().post("/models/new", data=model_form(
        ds["id"], network_source="custom", custom_network=TINY_NET, mean_subtraction="none", pretrained_model=str(weights)))
    assert resp.status_code == 400
    page = html_mod.unescape(resp.get_data(as_text=True))
    banner = re.search(r'class="flash flash-error"[^>]*>(.*?)</div>', page, re.S).group(1).strip()
    assert banner == "Please correct the marked fields."
    field = re.search(r'id="field-pretrained_model".*?class="field-error">(.*?)</', page, re.S).group(1)
    rgb = str(data / "fcn_gray_rgb.caffemodel")
    assert "the data has 3 channels (RGB), the weights in %s were made for 1 channel (gray)" % weights in field
    assert "(1) convert them on the server with 'caffeseg surgery gray-to-rgb %s %s'" % (weights, rgb) in field
    assert "(2) use weights made for 3-channel data (upload them on the Pretrained Models tab)" in field
    assert "(3) build the dataset with 1 channel (gray) instead (Clone it, channel conversion L)" in field
    assert page.count("Ways out") == 1
