"""The OpenAPI docs work offline: /docs and /redoc load every script and style from Passerelle."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from broker.api import create_app
from broker.api.docs import ASSETS
from broker.settings import Settings

_REFERENCE = re.compile(r"""(?:src|href|url)\s*[=:(]\s*["']?([^"')\s>]+)""")


@pytest.fixture(name="client")
def fixture_client(redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url))) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_page_names_no_other_host(client: TestClient, page: str) -> None:
    reply = client.get(page)
    assert reply.status_code == 200
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", reply.text), reply.text
    references = _REFERENCE.findall(reply.text)
    assert references  # the scan sees the page's scripts
    assert all(ref.startswith("/") for ref in references), references


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"text/javascript", "text/css", "image/svg+xml"}),
        ("/redoc", {"text/javascript", "image/svg+xml"}),
    ],
)
def test_every_asset_of_the_docs_is_served(client: TestClient, page: str, expected: set[str]):
    html = client.get(page).text
    assets = [ref for ref in _REFERENCE.findall(html) if ref.startswith("/docs/assets/")]
    types = set()
    for asset in assets:
        reply = client.get(asset)
        assert reply.status_code == 200, asset
        assert len(reply.content) > 100, asset
        types.add(reply.headers["content-type"].partition(";")[0])
    assert types == expected


def test_the_docs_load_the_schema_fastapi_generates(client: TestClient) -> None:
    """Swagger UI reads OpenAPI 3.1 from 5.0 on: the vendored bundle must be 5.x or later."""
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    bundle = (ASSETS / "swagger-ui" / "swagger-ui-bundle.js").read_text(encoding="utf-8")
    assert "OpenAPI31" in bundle
    assert "/openapi.json" in client.get("/docs").text
    assert "/openapi.json" in client.get("/redoc").text


def test_the_vendored_files_keep_their_licences() -> None:
    for directory in ("swagger-ui", "redoc"):
        assert (ASSETS / directory / "LICENSE").is_file()
    readme = (ASSETS / "README.md").read_text(encoding="utf-8")
    assert "5.35.0" in readme
    assert "2.5.4" in readme
