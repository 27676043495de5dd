"""``/docs`` without internet: Swagger UI's script and stylesheet served by the API.

quart-schema's ``/docs`` page loads Swagger UI from a CDN by default, which is a
blank page offline or behind a strict proxy. The assets come from the
``swagger-ui-py`` package instead (it ships Swagger UI 5's dist files); only the
two files the page needs are served. ReDoc and Scalar have no such package, so
their CDN pages (``/redocs``, ``/scalar``) are turned off.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from quart import Blueprint, Response, abort, send_from_directory
from quart_schema import hide

bp = Blueprint("docs_assets", __name__)
ASSETS = Path(str(files("swagger_ui") / "static"))  # the swagger-ui-py package's dist files
SERVED = ("swagger-ui-bundle.js", "swagger-ui.css")
JS_URL = "/docs/assets/swagger-ui-bundle.js"
CSS_URL = "/docs/assets/swagger-ui.css"


@bp.get("/docs/assets/<name>")
@hide
async def docs_asset(name: str) -> Response:
    if name not in SERVED:
        abort(404)
    resp: Response = await send_from_directory(ASSETS, name)
    resp.headers["Cache-Control"] = "public, max-age=86400"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
