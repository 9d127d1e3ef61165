"""How the app serves the dashboard: the shell for every /ui path, its scripts, the
Plotly bundle from the installed package, and a policy that keeps pages on this origin."""

from fastapi.testclient import TestClient

from app.api.main import app
from app.web.routes import PLOTLY_BUNDLE

client = TestClient(app)  # no lifespan: the routes only


def test_the_root_redirects_to_the_dashboard() -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui"


def test_every_dashboard_path_gets_the_shell_with_a_same_origin_policy() -> None:
    for path in ("/ui", "/ui/", "/ui/runs/3fa85f64-5717-4562-b3fc-2c963f66afa6",
                 "/ui/sweeps", "/ui/previews?dataset=x"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert '<main id="view"' in response.text
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "https:" not in policy


def test_scripts_and_the_plotly_bundle_are_served_from_this_server() -> None:
    page = client.get("/ui").text
    for src in ("/ui/vendor/plotly.min.js", "/ui/static/js/main.js", "/ui/static/style.css"):
        assert src in page
        assert client.get(src).status_code == 200, src
    bundle = client.get("/ui/vendor/plotly.min.js")
    assert bundle.content == PLOTLY_BUNDLE.read_bytes()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert client.get("/ui/static/js/nope.js").status_code == 404


def test_the_dashboard_is_not_part_of_the_api_schema() -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_the_api_docs_pages_refuse_other_hosts() -> None:
    for path in ("/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200
        assert "connect-src 'self'" in response.headers["content-security-policy"]
