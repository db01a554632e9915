"""The web console: plain HTML, JavaScript and CSS from ``static/`` (committed, no build step),
served at ``/console/``; ``/`` redirects there.

The files hold no data, so they are served without a key; the page asks for one (kept in the
tab's sessionStorage) and sends it as a Bearer token to the same REST API every client uses.
A Content-Security-Policy of ``'self'`` makes sure the page loads nothing from anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
PATH = "/console"

_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_HEADERS)
        return response


def install(app: FastAPI) -> None:
    app.mount(PATH, ConsoleFiles(directory=STATIC, html=True), name="console")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PATH}/")
