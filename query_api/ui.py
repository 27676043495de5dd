"""``/ui``: the web viewer — plain HTML, CSS and JavaScript, vendored, no build step.

The page talks to the same API as every other client, with a bearer token it
keeps in ``sessionStorage``. Strict headers: everything from this origin only, no
inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, redirect, send_from_directory
from quart_schema import hide

bp = Blueprint("ui", __name__)
STATIC = Path(__file__).parent / "static" / "ui"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


async def _send(name: str) -> Response:
    resp: Response = await send_from_directory(STATIC, name)
    for key, value in SECURITY_HEADERS.items():
        resp.headers[key] = value
    return resp


@bp.get("/ui")
@hide
async def ui_root() -> Response:
    """The viewer lives under ``/ui/`` so its relative asset paths resolve."""
    return redirect("/ui/", 308)  # type: ignore[return-value]


@bp.get("/ui/")
@hide
async def ui_index() -> Response:
    return await _send("index.html")


@bp.get("/ui/<path:name>")
@hide
async def ui_asset(name: str) -> Response:
    """A file of the viewer; ``send_from_directory`` refuses paths outside it (404)."""
    return await _send(name)
