"""waitress' request-body bound follows the app's upload limits (review finding 8): with
MAX_PRETRAINED_UPLOAD = 0 ("no limit") a pretrained upload larger than MAX_CONTENT_LENGTH + 1 MiB
must still get through waitress to the app."""
from __future__ import annotations

from caffeseg.web.server import server_options

BASE = {"HOST": "127.0.0.1", "PORT": 5000, "MAX_CONTENT_LENGTH": 64 << 20}


def test_no_pretrained_limit_gives_waitress_a_bound_far_above_the_other_uploads():
    for unlimited in (0, None):
        options = server_options(dict(BASE, MAX_PRETRAINED_UPLOAD=unlimited))
        assert options["max_request_body_size"] >= 64 << 30  # VGG16-sized files and far larger get through


def test_a_set_pretrained_limit_bounds_waitress_just_above_it():
    options = server_options(dict(BASE, MAX_PRETRAINED_UPLOAD=2 << 30))
    assert options["max_request_body_size"] == (2 << 30) + (1 << 20)
    options = server_options(dict(BASE, MAX_PRETRAINED_UPLOAD=1 << 20))  # the larger limit counts
    assert options["max_request_body_size"] == (64 << 20) + (1 << 20)
