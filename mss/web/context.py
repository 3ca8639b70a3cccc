"""What every web request carries: its correlation id, language, cookies, session and CSRF
secret, and the rendering of pages with all of that in their context.

Cookies: ``__Host-mss`` holds the session token (Secure, HttpOnly, SameSite=Strict, path /,
no domain, no expiry: it dies with the browser, and earlier on the server); ``__Host-mss-pre``
is a random secret given to a browser that has no session yet, so that the login form
carries a CSRF token too; ``mss-lang`` remembers the language switch.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.response import Redirect

from mss.accounts import Origin
from mss.runtime import Runtime
from mss.web import i18n
from mss.web.sessions import SessionPolicy, SessionToken, csrf_token_for

# What handlers are given by injection (see ``create_app`` and the controllers).
Rt = NamedDependency[Runtime]

SESSION_COOKIE = "__Host-mss"
PRE_COOKIE = "__Host-mss-pre"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
T = TypeVar("T")


@dataclass(frozen=True)
class WebConfig:
    """What the app factory hands to every request (``app.state.web``)."""

    rt: Runtime
    policy: SessionPolicy
    languages: dict[str, i18n.Language]


Web = NamedDependency[WebConfig]


def config(request: Request) -> WebConfig:
    """The app's WebConfig."""
    return request.app.state.web


def ensure_request_id(scope: Any) -> str:
    """The request's correlation id, made on first use and kept in the ASGI scope."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if not rid:
        rid = state["request_id"] = secrets.token_hex(8)
    return str(rid)


def request_id(request: Request) -> str:
    """The correlation id of this request (also in the X-Request-ID response header)."""
    return ensure_request_id(request.scope)


def client_address(request: Request) -> str:
    """The client's IP address (the proxy's view of it behind MSS_WEB_BEHIND_TLS_PROXY)."""
    return request.client.host if request.client is not None else ""


def origin(request: Request, channel: str = "web") -> Origin:
    """Where this request comes from, as the login service audits and counts it."""
    return Origin(channel, client=client_address(request), request_id=request_id(request))


def language(request: Request) -> i18n.Language:
    """The language this request is answered in."""
    code = i18n.negotiate(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))
    return config(request).languages[code]


def session_token(request: Request) -> SessionToken | None:
    """The session token of the request's cookie, or None."""
    return SessionToken.decode(request.cookies.get(SESSION_COOKIE))


def _pre_secret(request: Request) -> bytes | None:
    value = request.cookies.get(PRE_COOKIE) or ""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def csrf_secret(request: Request) -> bytes | None:
    """The client secret CSRF tokens are derived from: the session key, else the pre-login one."""
    token = session_token(request)
    if token is not None:
        return token.key
    return _pre_secret(request)


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (database, crypto) in a worker thread, off the event loop."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


def _cookie(key: str, value: str, *, max_age: int | None = None, httponly: bool = True) -> Cookie:
    return Cookie(key=key, value=value, path="/", secure=True, httponly=httponly, samesite="strict", max_age=max_age)


def set_session_cookie(response: Response, token: SessionToken) -> None:
    """Hand the client a session cookie (and drop its pre-login secret)."""
    response.set_cookie(_cookie(SESSION_COOKIE, token.encode()))
    # Deleted with the same attributes: a browser ignores a __Host- cookie without Secure.
    response.set_cookie(_cookie(PRE_COOKIE, "", max_age=0))


def clear_session_cookie(response: Response) -> None:
    """Make the client forget its session cookie."""
    response.set_cookie(_cookie(SESSION_COOKIE, "", max_age=0))


def redirect(path: str) -> Redirect:
    """A 303 redirect to a path of this site (never elsewhere)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        path = "/"
    return Redirect(path=path, status_code=303)


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    user: str | None = None,
    new_session: SessionToken | None = None,
    **context: Any,
) -> Response:
    """A page of ``template`` in the request's language, with its CSRF token.

    ``new_session`` is the session this response hands out (its forms carry that session's
    token). A browser with neither a session nor a pre-login secret gets a pre-login secret
    here, so that any form on the page can be submitted.
    """
    lang = language(request)
    secret = new_session.key if new_session is not None else csrf_secret(request)
    new_pre = None
    if secret is None:
        secret = secrets.token_bytes(32)
        new_pre = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
    html = lang.env.get_template(template).render(
        csrf_token=csrf_token_for(secret),
        user=user,
        path=request.url.path,
        request_id=request_id(request),
        languages=i18n.LANGUAGES,
        **context,
    )
    response = Response(content=html, status_code=status_code, media_type=MediaType.HTML)
    if new_pre is not None:
        response.set_cookie(_cookie(PRE_COOKIE, new_pre))
    return response


def set_language_cookie(response: Response, code: str) -> None:
    """Remember the language switch for a year."""
    response.set_cookie(_cookie(i18n.COOKIE, code, max_age=365 * 24 * 3600, httponly=False))
