"""/docs (Swagger UI) and /redoc (ReDoc) without a CDN.

FastAPI's own pages load their scripts, styles and favicon from jsdelivr and
Google Fonts, so they are blank on a machine without internet. The same pages
here load Swagger UI 5 and ReDoc 2 from the ``fastapi-offline`` package, mounted
at ``ASSETS_URL``; the pages name nothing outside this server.
"""

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS = {"swagger_js": "swagger-ui-bundle.js", "swagger_css": "swagger-ui.css",
          "redoc_js": "redoc.standalone.js", "favicon": "favicon.png"}


# ReDoc's bundle draws Redocly's logo from their CDN, whatever its options say: the
# browser is told to load nothing from another host, so the page stays offline.
LOCAL_ONLY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
              "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
              "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = LOCAL_ONLY
    return page


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the pages at ``docs_url`` and ``redoc_url`` (the app is made with
    ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not there)."""
    missing = [name for name in ASSETS.values() if not (ASSETS_DIR / name).is_file()]
    if missing:  # a fastapi-offline that moved its files: fail at start, not in a browser
        raise RuntimeError(f"fastapi-offline has no {', '.join(missing)} under {ASSETS_DIR}")
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def asset(request: Request, key: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{ASSETS[key]}"

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _local_only(get_swagger_ui_html(
            openapi_url=openapi_url(request), title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url, swagger_js_url=asset(request, "swagger_js"),
            swagger_css_url=asset(request, "swagger_css"),
            swagger_favicon_url=asset(request, "favicon"),
            # no badge from swagger.io's online validator: nothing leaves this server
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None}))

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _local_only(get_redoc_html(
            openapi_url=openapi_url(request), title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc_js"), redoc_favicon_url=asset(request, "favicon"),
            with_google_fonts=False))
