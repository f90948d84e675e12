"""Errors and JSON answers of the HTTP port (CONTRACT §6): ``{"error": ...}`` with a fitting status."""

from __future__ import annotations

import json

from twisted.web import resource

RETRY_AFTER = 1  # seconds, in the Retry-After header of a 503


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.fields = fields or {}  # more members of the error document


class Unavailable(ApiError):
    """503: no leader known or none confirmed the read in time; try again."""

    def __init__(self, message: str):
        super().__init__(503, message, retry_after=RETRY_AFTER)


def json_response(request, body: dict, status: int = 200) -> bytes:
    """The JSON document's bytes, with its headers set (its length too: an answer written
    later, from a Deferred, is then not chunked)."""
    data = json.dumps(body).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def error_response(request, error: ApiError) -> bytes:
    if error.retry_after is not None:
        request.setHeader(b"retry-after", str(error.retry_after).encode())
    return json_response(request, {"error": error.message, **error.fields}, error.status)


def not_found(request) -> bytes:
    return error_response(request, ApiError(404, f"no such resource: {request.path.decode(errors='replace')}"))


class JsonResource(resource.Resource):
    """GET and HEAD only; everything else is a JSON 405."""

    isLeaf = True

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            method = request.method.decode(errors="replace")
            return error_response(request, ApiError(405, f"method {method} not allowed (use GET)"))
        return self.render_GET(request)


class NotFound(JsonResource):
    def render_GET(self, request):
        return not_found(request)
