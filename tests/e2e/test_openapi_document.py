"""The live ``/openapi.json`` is a valid OpenAPI 3.1 document that describes the real app:
a real validator accepts it, every ``$ref`` resolves, every documented path is a route of the
app (and every ``/api/v1`` route is documented, with each of its methods), and every body and
JSON response carries an example that its own schema accepts. ``/docs`` loads Swagger UI from
this server only.

What the server answers against the document is test_rest_schema.py's and
test_rest_stateful.py's (schemathesis).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import jsonschema
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from quart_schema.openapi import QUART_SCHEMA_HIDDEN_ATTRIBUTE
from werkzeug.routing import RequestRedirect

from gateway.rest.docs import SWAGGER_ASSETS

RULE_VARIABLE = re.compile(r"<(?:[^<>:]*:)?([^<>]+)>")
METHODS = {"get", "put", "post", "delete", "patch"}
SAMPLE = {"integer": "7", "number": "7", "string": "x1"}
"""A path parameter's value by its schema type, to turn a documented path into a request."""


async def fetch_document(engine: Any) -> dict[str, Any]:
    async with engine.client() as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref  # everything is in this one document
    node: Any = document
    for escaped in ref[2:].split("/"):
        part = escaped.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [ref for item in value.values() for ref in refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in refs(item)]
    return []


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


async def test_the_document_is_valid_openapi_3_1_and_every_ref_resolves(engine) -> None:
    document = await fetch_document(engine)
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)  # raises with the first violation
    schemas = document["components"]["schemas"]
    assert schemas, "components.schemas is empty"
    found = refs(document)
    assert len(found) > 50, len(found)
    for ref in found:
        pointer(document, ref)
    # Nothing listed that nothing uses: every component is reached from a path.
    used = {ref.rsplit("/", 1)[1] for ref in found if ref.startswith("#/components/schemas/")}
    assert set(schemas) == used, set(schemas) ^ used


async def test_the_paths_are_the_routes_of_the_app(engine) -> None:
    document = await fetch_document(engine)
    assert engine.services is not None
    app = engine.services.app
    adapter = app.url_map.bind("127.0.0.1")
    documented: set[tuple[str, str]] = set()
    for path, method, operation in operations(document):
        documented.add((path, method))
        parameters = {p["name"]: p for p in operation.get("parameters", ()) if p["in"] == "path"}
        assert set(re.findall(r"{([^}]+)}", path)) == set(parameters), path
        concrete = path
        for name, parameter in parameters.items():
            concrete = concrete.replace(f"{{{name}}}", SAMPLE[parameter["schema"]["type"]])
        try:
            endpoint, _ = adapter.match(concrete, method=method.upper())
        except RequestRedirect as exc:  # pragma: no cover - would be a bug of its own
            raise AssertionError(f"{method} {path} redirects to {exc.new_url}") from exc
        view = app.view_functions[endpoint]
        assert operation["operationId"] == f"{method}_{view.__name__}", (path, endpoint)
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        hidden = getattr(app.view_functions[rule.endpoint], QUART_SCHEMA_HIDDEN_ATTRIBUTE, False)
        if rule.websocket or hidden or not rule.rule.startswith("/api/v1/"):
            continue
        path = RULE_VARIABLE.sub(r"{\1}", rule.rule)
        routes |= {
            (path, method.lower()) for method in rule.methods or () if method.lower() in METHODS
        }
    assert routes == {entry for entry in documented if entry[0].startswith("/api/v1/")}
    assert ("/api/v1/signals/{strategy_id}/{signal_id}/{version}/decision", "post") in routes


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # The media type's schema, beside the document's components so its refs resolve.
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


async def test_every_body_and_response_has_an_example_its_schema_accepts(engine) -> None:
    document = await fetch_document(engine)
    checked = 0
    for path, method, operation in operations(document):
        label = f"{method.upper()} {path}"
        body = operation.get("requestBody")
        if body is not None:
            assert body.get("required") is True, label
            for media in body["content"].values():
                assert "example" in media, f"{label}: no request example"
                validator(document, media["schema"]).validate(media["example"])
                checked += 1
        json_responses = 0
        for status, response in operation["responses"].items():
            media = response.get("content", {}).get("application/json")
            if media is None:
                assert response["content"], f"{label} {status}: no content"
                continue
            assert "example" in media, f"{label} {status}: no response example"
            validator(document, media["schema"]).validate(media["example"])
            json_responses += 1
            checked += 1
        assert json_responses, f"{label}: no JSON response"
    assert checked > 100, checked


async def test_header_and_query_parameters_say_what_is_required(engine) -> None:
    document = await fetch_document(engine)
    post = document["paths"]["/api/v1/signals"]["post"]
    headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
    assert headers["x-signature"]["required"] is True
    assert headers["x-strategy-id"]["required"] is True
    listing = document["paths"]["/api/v1/signals"]["get"]
    query = {p["name"]: p for p in listing["parameters"] if p["in"] == "query"}
    assert not query["limit"].get("required", False)  # every query field has a default


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


async def test_the_docs_page_loads_swagger_ui_from_this_server(engine) -> None:
    async with engine.client() as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        links = _Links()
        links.feed(page.text)
        assert links.urls, page.text
        for url in links.urls:
            assert url.startswith("/") and not url.startswith("//"), url
        assert 'url: "/openapi.json"' in page.text
        types = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
        for url in links.urls:
            asset = await http.get(url)
            assert asset.status_code == 200, url
            name = url.rsplit("/", 1)[1]
            assert asset.headers["content-type"].split(";")[0] == types[name], url
            assert len(asset.content) > 10_000, url
        assert "SwaggerUIBundle" in (await http.get(f"{SWAGGER_ASSETS}/swagger-ui-bundle.js")).text
        for name in ("index.html", "..%2Fswagger-ui.js", "swagger-ui.js.map"):
            assert (await http.get(f"{SWAGGER_ASSETS}/{name}")).status_code == 404, name
