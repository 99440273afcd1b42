"""Issue 21 (the lab walked as a newcomer) through Flask's test client on the fake backend."""
from __future__ import annotations

import pytest

from jobs import resources
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
