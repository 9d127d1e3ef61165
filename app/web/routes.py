"""Serve the dashboard: one HTML shell for every ``/ui`` path (the pages route in the
browser), its scripts and styles, and Plotly's bundle from the installed ``plotly``
package (no CDN at run time, nothing vendored into the repository)."""

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PLOTLY_BUNDLE = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))

# The pages only talk to this origin. Plotly sets inline styles on its charts and the
# previews show blob: images made from authenticated fetches.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; "
                           "style-src 'self' 'unsafe-inline'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'")


def _shell() -> Response:
    response = FileResponse(STATIC / "index.html", media_type="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/ui/vendor/plotly.min.js", include_in_schema=False)
    def plotly_bundle() -> FileResponse:
        return FileResponse(PLOTLY_BUNDLE, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)

    @app.get("/ui", include_in_schema=False)
    def dashboard() -> Response:
        return _shell()

    @app.get("/ui/{page:path}", include_in_schema=False)
    def dashboard_page(page: str) -> Response:  # the page's script reads the path
        return _shell()
