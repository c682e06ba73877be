"""The page to try an agent in a browser: ``GET /`` (served by ``mmagent serve``).

The shell (HTML, JS, CSS, shipped as package data beside this file, no CDN) is the same for
every model and holds nothing of it: the page reads the model's inputs from ``/v1/schema`` and
asks ``/v1/act`` and ``/v1/explain``, with the API key like any other client. That is why the
shell is served without a key while every API route still needs one: a browser cannot attach
a header to a page navigation, and an unauthenticated visitor gets an empty form that asks for
a key and shows nothing until the server accepts it.

Headers: a Content-Security-Policy that allows only this origin's scripts and styles (no inline
script, no third-party request), ``data:`` / ``blob:`` images and audio (previews, the heatmap),
and no framing.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from mmagent.serving.schemas import ApiError

# name -> media type: the only files served (a fixed list, so no path from a request is opened).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "main.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "form.js": "text/javascript; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "wav.js": "text/javascript; charset=utf-8",
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def asset(name: str) -> bytes:
    """The bytes of one of the page's files (read once from the package)."""
    return files(__name__).joinpath(name).read_bytes()


def _response(name: str) -> Response:
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


def build_page_router() -> APIRouter:
    """``GET /`` (the page) and ``GET /page/NAME`` (its scripts and style sheet)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return _response("index.html")

    @router.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        if name not in ASSETS or name == "index.html":
            raise ApiError(404, f"no page file {name!r}", "path")
        return _response(name)

    return router
