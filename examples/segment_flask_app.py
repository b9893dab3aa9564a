"""A Flask app instrumented the way Segment's Python docs show, sending to Vitally.

    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme python examples/segment_flask_app.py
    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme flask --app examples/segment_flask_app.py run

The code is a Segment app's, call for call: the one difference is the import line, which was
``import segment.analytics as analytics``. Settings come from the environment:

- ``VITALLY_WRITE_KEY``: the Analytics API token from Vitally (Settings, Integrations), where a
  Segment app reads its write key.
- ``VITALLY_SUBDOMAIN`` (``acme`` for acme.vitally.io), or ``VITALLY_HOST`` (a full URL, such as a
  local test receiver): where the messages go. Either may be left unset; the host wins if both are set.
- ``PORT``: the port of the development server (5000).

What Vitally gets from each endpoint (JSON bodies; each answers ``{"ok": true}``):

- ``POST /signup`` ``{"user_id", "email", "name", "plan", "company_id", "company_name", "employees"}``:
  ``identify`` (the traits are held: Vitally needs the user's account), then ``group`` (an
  ``account`` with the company's traits, and a ``user`` with the held traits linking the user to
  it), then ``track("Signed Up")`` in the company's account (``context["groupId"]``).
- ``POST /login`` ``{"user_id", "email", "company_id"}``: ``identify`` with
  ``context={"groupId": ...}``, a ``user`` in that account at once.
- ``GET /docs/<page>?user_id=...``: ``page(user_id, "Docs", page)``, a ``track`` named
  ``Viewed Docs <page> Page``.
- ``POST /rename`` ``{"previous_id", "user_id"}``: ``alias``, which sends nothing (Vitally keys
  users by your own ID) and logs a warning once.
- ``POST /export`` ``{"user_id", "format", "rows"}``: a ``track`` sent only to Vitally
  (``integrations={"All": False, "Vitally": True}``) and one kept from it (``{"Vitally": False}``).

Calls queue and return at once; a background thread sends them in batches. ``analytics.flush``
at exit, as Segment's docs recommend, sends what is still queued when the server stops.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Dict, List

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

import analytics_vitally.segment as analytics  # was: import segment.analytics as analytics

log = logging.getLogger(__name__)


def on_error(error: Exception, items: List[Dict[str, Any]]) -> None:
    log.error("An error occurred sending %d analytics messages: %s", len(items), error)


analytics.write_key = os.environ["VITALLY_WRITE_KEY"]
analytics.subdomain = os.environ.get("VITALLY_SUBDOMAIN")  # acme for acme.vitally.io
analytics.host = os.environ.get("VITALLY_HOST")  # or a full URL (a proxy, a local receiver); it wins if both are set
analytics.on_error = on_error
atexit.register(analytics.flush)  # send what is still queued when the process exits

app = Flask(__name__)


@app.post("/signup")
def signup() -> ResponseReturnValue:
    body = request.get_json()
    user_id, company_id = body["user_id"], body["company_id"]
    analytics.identify(user_id, {"email": body["email"], "name": body["name"], "plan": body["plan"]})
    analytics.group(
        user_id,
        company_id,
        {"name": body["company_name"], "employees": body["employees"]},
        context={"ip": request.remote_addr},
    )
    analytics.track(
        user_id,
        "Signed Up",
        {"plan": body["plan"]},
        context={"ip": request.remote_addr, "groupId": company_id},
    )
    return jsonify(ok=True)


@app.post("/login")
def login() -> ResponseReturnValue:
    body = request.get_json()
    analytics.identify(body["user_id"], {"email": body["email"]}, context={"groupId": body["company_id"]})
    return jsonify(ok=True)


@app.get("/docs/<page>")
def docs(page: str) -> ResponseReturnValue:
    analytics.page(request.args["user_id"], "Docs", page, {"path": request.path})
    return jsonify(ok=True)


@app.post("/rename")
def rename() -> ResponseReturnValue:
    body = request.get_json()
    analytics.alias(body["previous_id"], body["user_id"])
    return jsonify(ok=True)


@app.post("/export")
def export() -> ResponseReturnValue:
    body = request.get_json()
    user_id = body["user_id"]
    # For the customer success team only: sent to Vitally and no other destination.
    analytics.track(user_id, "Exported Data", {"format": body["format"]}, integrations={"All": False, "Vitally": True})
    # For the warehouse: every destination but Vitally.
    analytics.track(user_id, "Export Rows Counted", {"rows": body["rows"]}, integrations={"Vitally": False})
    return jsonify(ok=True)


if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "5000")))
