"""How the REST handlers describe themselves in ``/openapi.json``, and how they answer.

Every handler documents each status it can answer with (``quart_schema.document_response`` for
its own model, :func:`errors` for the JSON error shape), so schemathesis can hold the server to
the document: an undocumented status or a body off its schema is a failure in the suite.

Handlers answer with :func:`json_response`: the msgspec Struct the route documents, encoded
once by msgspec (the Struct's types are the schema, so what is sent matches what is
documented). Images are documented with :func:`binary`, which the provider below turns into a
``format: binary`` response of the right media type (quart-schema only knows JSON models).

:class:`TripwireOpenAPI` makes the document complete and valid (components, paths, examples);
:func:`install_openapi` also serves Swagger UI's files for ``/docs`` from a pinned package.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from quart import Quart, Response, send_from_directory
from quart_schema import DataSource, document_response, hide, security_scheme
from quart_schema.openapi import OpenAPIProvider
from quart_schema.validation import (
    QUART_SCHEMA_HEADERS_ATTRIBUTE,
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    QUART_SCHEMA_RESPONSE_ATTRIBUTE,
)
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound
from werkzeug.routing import Rule

if TYPE_CHECKING:
    from quart_schema import QuartSchema

__all__ = [
    "ERROR_EXAMPLES",
    "SWAGGER_ASSETS",
    "ErrorOut",
    "TripwireOpenAPI",
    "bearer",
    "binary",
    "errors",
    "install_openapi",
    "json_response",
    "raw_json",
]

F = TypeVar("F", bound=Callable[..., Any])

_MEDIA_ATTRIBUTE = "_tripwire_media"
_ENCODER = msgspec.json.Encoder()

REF = "#/components/schemas/{name}"
_PREFIX = REF.format(name="")
_RULE_PARAMETER = re.compile(r"<(?:[^<>:]*:)?([^<>]+)>")
"""A werkzeug rule's variable, ``<name>`` or ``<converter:name>`` (one at a time)."""

SWAGGER_ASSETS = "/docs/static"
"""Where ``/docs`` loads Swagger UI's script and stylesheet from (this server, not a CDN)."""
_SWAGGER_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})
_ASSET_MAX_AGE_S = 86_400  # the files change only with the pinned package

ERROR_EXAMPLES: dict[int, tuple[str, str]] = {
    400: ("malformed", "the request does not match its schema: Expected `int`, got `str`"),
    401: ("unauthorized", "missing or invalid bearer token"),
    403: ("forbidden", "admins only"),
    404: ("not_found", "no such position"),
    409: ("conflict", "the position is already closing"),
    413: ("too_large", "the body is larger than max_body_bytes"),
    422: ("guard_blocked", "drawdown is critical: opens are blocked"),
    429: ("rate_limited", "too many requests; retry after the Retry-After seconds"),
}
"""The example body of each error status the API documents: ``(code, message)``."""


class ErrorOut(msgspec.Struct, frozen=True, kw_only=True):
    """Every error: a stable machine-readable ``code``, a message, and sometimes details."""

    code: str
    message: str
    details: dict[str, Any] | None = None


def errors(*statuses: int) -> Callable[[F], F]:
    """Document the JSON error body for each of ``statuses``."""

    def decorator(func: F) -> F:
        for status in statuses:
            func = document_response(ErrorOut, status)(func)
        return func

    return decorator


bearer = security_scheme([{"bearer": []}])
"""Marks a route as needing ``Authorization: Bearer <JWT>``."""


def binary(content_type: str, status: int = 200, description: str = "") -> Callable[[F], F]:
    """Document a non-JSON body (``image/png``) answered with ``status``."""

    def decorator(func: F) -> F:
        media: dict[int, tuple[str, str]] = dict(getattr(func, _MEDIA_ATTRIBUTE, {}))
        media[status] = (content_type, description)
        setattr(func, _MEDIA_ATTRIBUTE, media)
        return func

    return decorator


def json_response(value: Any, status: int = 200) -> Response:
    """``value`` (a Struct, or builtins) encoded by msgspec as the response body."""
    return raw_json(_ENCODER.encode(value), status)


def raw_json(body: bytes, status: int = 200) -> Response:
    """An already encoded JSON body (from the read cache, or spliced from cached parts)."""
    return Response(body, status=status, content_type="application/json")


class TripwireOpenAPI(OpenAPIProvider):
    """quart-schema's provider, made to emit a complete OpenAPI 3.1 document.

    quart-schema asks msgspec for each model's schema alone and keeps only its top level, so the
    nested Structs and enums it refers to never reach ``components.schemas``. Here every model
    the visible routes document is given to one :func:`msgspec.json.schema_components` call
    (one namespace: a name clash between two modules is resolved once, the same everywhere),
    bodies and responses ``$ref`` their component, and the components no operation reaches are
    dropped. Also:

    * paths with several converters (``/<a>/<b>/<int:c>``) become ``/{a}/{b}/{c}``
      (quart-schema's pattern swallows everything up to the last colon);
    * request bodies are ``required`` (a route that reads one answers 400 without it, and
      OpenAPI's default is optional), and so are the query and header parameters the model
      requires;
    * every JSON body carries its example from ``examples`` (an instance of the model) and every
      error response the :data:`ERROR_EXAMPLES` body of its status;
    * the binary responses declared with :func:`binary`.
    """

    def __init__(
        self, app: Quart, extension: QuartSchema, examples: Mapping[type[Any], Any]
    ) -> None:
        super().__init__(app, extension)
        self._examples = dict(examples)
        self._refs: dict[type[Any], dict[str, Any]] = {}
        self._components: dict[str, Any] = {}

    def schema(self) -> dict[str, Any]:
        models: dict[type[Any], None] = {}
        for rule in self.generate_rules():
            models.update(
                dict.fromkeys(_documented_models(self._app.view_functions[rule.endpoint]))
            )
        refs, components = msgspec.json.schema_components(list(models), ref_template=REF)
        self._refs = dict(zip(models, refs, strict=True))
        self._components = components
        document = super().schema()
        document["paths"] = dict(document["paths"])
        document["components"]["schemas"] = _reachable(document, components)
        return document

    def _model(self, model: type[Any]) -> dict[str, Any]:
        """The component schema of ``model`` itself (an object with ``properties``)."""
        name = self._refs[model]["$ref"].rsplit("/", 1)[1]
        component: dict[str, Any] = self._components[name]
        return component

    def build_querystring_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return self._parameters(model, "query", lambda name: name), {}

    def build_headers_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return self._parameters(model, "header", lambda name: name.replace("_", "-")), {}

    def _parameters(
        self, model: type[Any], where: str, spell: Callable[[str], str]
    ) -> list[dict[str, Any]]:
        component = self._model(model)
        required = set(component.get("required", ()))
        parameters = []
        for name, schema in component["properties"].items():
            parameter: dict[str, Any] = {"name": spell(name), "in": where, "schema": schema}
            if name in required:
                parameter["required"] = True
            if "description" in schema:
                parameter["description"] = schema["description"]
            parameters.append(parameter)
        return parameters

    def build_request_body(
        self, model: type[Any], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, _ = super().build_request_body(model, source)
        for media in body["content"].values():
            media["schema"] = self._refs[model]
            if model in self._examples:
                media["example"] = msgspec.to_builtins(self._examples[model])
        return {**body, "required": True}, {}

    def build_response_object(
        self, model: type[Any], headers_model: type[Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        response, _ = super().build_response_object(model, headers_model)
        response["content"]["application/json"]["schema"] = self._refs[model]
        if model in self._examples:
            example = msgspec.to_builtins(self._examples[model])
            response["content"]["application/json"]["example"] = example
        return response, {}

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        built, components = super().build_paths(rule)
        (operations,) = built.values()
        func = self._app.view_functions[rule.endpoint]
        for operation in operations.values():
            responses = dict(operation["responses"])
            for status, response in responses.items():
                content = response.get("content", {}).get("application/json")
                if content is not None and content["schema"] == self._refs.get(ErrorOut):
                    responses[status] = _error_response(status)
            for status, (content_type, description) in getattr(func, _MEDIA_ATTRIBUTE, {}).items():
                responses[status] = {
                    "description": description,
                    "content": {content_type: {"schema": {"type": "string", "format": "binary"}}},
                }
            operation["responses"] = responses
        return {_RULE_PARAMETER.sub(r"{\1}", rule.rule): operations}, components


def _error_response(status: int) -> dict[str, Any]:
    # A fresh object per status: each carries its own example of the shared ErrorOut shape.
    code, message = ERROR_EXAMPLES[status]
    return {
        "description": ErrorOut.__doc__ or "",
        "content": {
            "application/json": {
                "schema": {"$ref": REF.format(name=ErrorOut.__name__)},
                "example": {"code": code, "message": message},
            }
        },
    }


def _documented_models(func: Callable[..., Any]) -> list[type[Any]]:
    """The models a view's body, responses, query string and headers are documented with."""
    models: list[type[Any]] = []
    request = getattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
    if request is not None:
        models.append(request[0])
    for model, _headers in getattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {}).values():
        models.append(model)
    for attribute in (QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, QUART_SCHEMA_HEADERS_ATTRIBUTE):
        model = getattr(func, attribute, None)
        if model is not None:
            models.append(model)
    return models


def _reachable(document: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The components the paths ``$ref``, directly or through other components.

    The query and header models are spread into parameters, so their own components would
    otherwise be listed and never used.
    """
    kept: dict[str, Any] = {}
    pending = _refs_in(document["paths"])
    while pending:
        name = pending.pop()
        if name not in kept:
            kept[name] = components[name]
            pending |= _refs_in(components[name])
    return dict(sorted(kept.items()))


def _refs_in(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = set()
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith(_PREFIX):
                found.add(item.removeprefix(_PREFIX))
            else:
                found |= _refs_in(item)
        return found
    if isinstance(value, list):
        return set().union(*map(_refs_in, value)) if value else set()
    return set()


def install_openapi(app: Quart, examples: Mapping[type[Any], Any]) -> None:
    """Use :class:`TripwireOpenAPI` for the app's ``/openapi.json`` (QuartSchema is set up),
    with ``examples`` (model -> an instance) for the bodies, and serve Swagger UI's assets
    from the pinned ``swagger-ui-bundle-v2`` package so ``/docs`` works offline."""
    extension = app.extensions["QUART_SCHEMA"]
    extension.openapi_provider = TripwireOpenAPI(app, extension, examples)
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = f"{SWAGGER_ASSETS}/swagger-ui-bundle.js"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = f"{SWAGGER_ASSETS}/swagger-ui.css"
    app.add_url_rule(f"{SWAGGER_ASSETS}/<name>", "swagger_asset", _swagger_asset)


@hide
async def _swagger_asset(name: str) -> Response:
    """One of Swagger UI's files (only those the page loads; anything else is 404)."""
    if name not in _SWAGGER_FILES:
        raise NotFound()
    response = await send_from_directory(str(swagger_ui_path), name)
    response.cache_control.public = True
    response.cache_control.max_age = _ASSET_MAX_AGE_S
    return response
