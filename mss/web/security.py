"""Protections applied to every response and every state-changing request.

* The correlation id of each request in ``X-Request-ID`` (the log and error pages show it).
* Security headers: a Content-Security-Policy without inline scripts or styles and no remote
  source (``default-src 'self'``, ``frame-ancestors 'none'``), ``Referrer-Policy:
  no-referrer``, ``X-Content-Type-Options: nosniff``, no caching of pages that hold medical
  data, HSTS. A response may set its own CSP (an inline PDF that the message page frames).
* CSRF: every POST, PUT, PATCH and DELETE outside the bearer-token API must carry the
  token of the client's secret (``csrf_token`` form field or ``X-CSRF-Token`` header).
  The API takes no cookies, so a browser cannot be made to call it on a user's behalf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, PermissionDeniedException
from litestar.status_codes import HTTP_411_LENGTH_REQUIRED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from mss.web.context import CSRF_FIELD, CSRF_HEADER, config, csrf_secret, ensure_request_id, run, session_token
from mss.web.sessions import csrf_matches, known

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/api/"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# The largest body a form may have before a login (an address, a password, a token): anyone
# can make a pre-login secret, so what is read for one is bounded by this, not by the size a
# message may have.
PRE_LOGIN_BODY = 16 * 1024

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
# An inline PDF is framed by the message page of the same origin, and contains no HTML.
PDF_CSP = "default-src 'none'; frame-ancestors 'self'"
ATTACHMENT_CSP = "default-src 'none'; sandbox"

DEFAULT_HEADERS = (
    ("content-security-policy", CSP),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    ("strict-transport-security", "max-age=31536000"),
)


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the security headers and the correlation id on every response,
    error pages and unknown routes included."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in DEFAULT_HEADERS:
        if headers.get(name) is None:
            headers.add(name, value)
    if headers.get("cache-control") is None:
        headers.add("cache-control", "public, max-age=3600" if scope["path"].startswith("/static/") else "no-store")
    headers.add("x-request-id", ensure_request_id(scope))


def _small_enough_before_login(length: str | None) -> None:
    """Refuse, unread, a body of no stated length or past PRE_LOGIN_BODY (411, 413)."""
    if length is None:
        raise ClientException("a form before login states its length", status_code=HTTP_411_LENGTH_REQUIRED)
    if not (length.isascii() and length.isdigit()) or int(length) > PRE_LOGIN_BODY:
        raise ClientException(
            f"a form before login is at most {PRE_LOGIN_BODY} bytes", status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE
        )


class CsrfMiddleware:
    """Refuses a state-changing request without the CSRF token of the client's secret."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] in SAFE_METHODS or scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        request = scope["litestar_app"].request_class(scope=scope, receive=receive)
        secret = csrf_secret(request)
        if secret is None:
            # Refused before its body is read: parsing a form of tens of megabytes for a
            # request that can only be refused would cost its sender nothing, and us seconds.
            raise PermissionDeniedException("CSRF token missing or wrong")
        token = session_token(request)
        if token is None or not await run(known, config(request).rt.engine, token):
            _small_enough_before_login(request.headers.get("content-length"))
        presented = request.headers.get(CSRF_HEADER)
        if not presented:
            content_type, _params = request.content_type
            if content_type in {"application/x-www-form-urlencoded", "multipart/form-data"}:
                form = await request.form()
                value = form.get(CSRF_FIELD)
                presented = value if isinstance(value, str) else None
        if not csrf_matches(secret, presented):
            raise PermissionDeniedException("CSRF token missing or wrong")
        await self.app(scope, receive, send)
