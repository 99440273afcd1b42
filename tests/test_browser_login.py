"""DIGITS' login in the browser: the navbar offers it, a change without a user leads to the login
page and back, the user name is shown and marks the job, another user is refused its edits."""
from __future__ import annotations

import pytest

from test_browser_e2e import CHROMIUM_ARGS, LiveServer, browser_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@pytest.fixture
def login_site(tmp_path):
    from test_web_fakes import FakeBackend, sunnybrook_plugin
    from caffeseg.web import create_app
    fake = FakeBackend(tmp_path / "jobs")
    (tmp_path / "data").mkdir()
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "LOGIN": True, "SECRET_KEY": "test"})
    server = LiveServer(app)
    yield server.url, fake
    server.stop()


def test_ui_login_names_the_user_and_logout_forgets_it(browser_page, login_site):
    url, fake = login_site
    page = browser_page
    page.goto(url + "/")
    assert page.inner_text("#nav-user").strip() == "Log in"
    page.click("#nav-login")
    page.wait_for_selector("#login-form")
    page.fill("#username", "bad name!")
    page.click("#login-form button[type=submit]")
    assert "A user name is 1-64 letters" in page.inner_text("#login-error")
    page.fill("#username", "alice")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav-user form")
    assert "alice" in page.inner_text("#nav-user") and "Log out" in page.inner_text("#nav-user")
    page.click("#nav-user form button")
    page.wait_for_selector("#nav-login")
    assert not page.js_errors


def test_ui_a_change_without_a_user_goes_to_the_login_page(browser_page, login_site):
    url, fake = login_site
    page = browser_page
    response = page.request.post(url + "/api/jobs/bulk", data={"action": "delete", "ids": []},
                                 headers={"X-Requested-With": "t"})
    assert response.status == 401 and "log in first" in response.text()
    page.goto(url + "/login?next=/models/new")
    page.fill("#username", "bob")
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url + "/models/new")
    assert "bob" in page.inner_text("#nav-user")
