"""The navbar's Info (DIGITS' "Info" menu): the server, the versions, the real Caffe found and
the CPU/GPUs (``jobs.server_info``, as ``caffeseg info`` prints it); ``api_bp``: the same as JSON."""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from caffeseg.web.views.common import backend

bp = Blueprint("info", __name__)
api_bp = Blueprint("info_api", __name__, url_prefix="/api")


@bp.route("/info")
def page():
    return render_template("info.html", info=backend().server_info())


@api_bp.route("/info")
def api_info():
    return jsonify(backend().server_info())
