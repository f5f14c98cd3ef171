"""The committed OpenAPI document (processors/openapi.json) describes exactly the worker's routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meterline.processors.app import create_app
from meterline.processors.views import openapi_document
from meterline.settings import Settings


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def test_every_route_of_the_worker_is_documented_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, bootstrap="127.0.0.1:1"))
    ours = {path for path in app.web.views if path.startswith("/v1/") or path in ("/healthz", "/openapi.json")}
    documented = set(openapi_document()["paths"])
    # Faust writes a path parameter as {name}, as OpenAPI does.
    assert ours == documented


def test_the_document_is_openapi_3_1_and_every_reference_resolves() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    for ref in refs(document):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref
    for path, item in document["paths"].items():
        for method, operation in item.items():
            parameters = {p["name"] for p in operation["parameters"]}
            assert parameters == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (path, method)
