"""Error responses: a clean page (or JSON object under ``/api/``) for every 4xx and 5xx.

Nothing internal reaches the client: no exception class, no traceback, no service
message for a 5xx. The log gets the details with the request's correlation id, which the
page and the JSON show so that support can find them.
"""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from mss.errors import (
    AccountLocked,
    AuthError,
    DecryptionError,
    DirectoryError,
    DraftNotFound,
    DraftTooLarge,
    EnrolmentRequired,
    FilterError,
    MessageNotFound,
    MssError,
    ReceiptNotPending,
    StandingError,
    TooManyAttempts,
)
from mss.web.api import ApiError
from mss.web.auth import LoginRequired
from mss.web.context import clear_session_cookie, language, redirect, render, request_id
from mss.web.messages import _
from mss.web.security import API_PREFIX

log = logging.getLogger("mss.web")

TITLES = {
    400: _("The request is not valid."),
    401: _("Please log in."),
    403: _("This action is not allowed."),
    404: _("This page or message does not exist, or is not in your mailbox."),
    405: _("This action is not allowed here."),
    409: _("This was already done."),
    413: _("What you sent is too large."),
    422: _("The request cannot be processed."),
    423: _("The account is locked for a while."),
    429: _("Too many requests; try again in a moment."),
    500: _("Something went wrong on our side."),
}
CODES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    422: "unprocessable",
    423: "locked",
    429: "too-many-requests",
    500: "internal-error",
}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def _api_error(
    request: Request,
    status: int,
    code: str,
    message: str,
    fields: dict | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, object] = {"error": code, "message": message, "request_id": request_id(request)}
    if fields:
        body["fields"] = fields
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _page(request: Request, status: int) -> Response:
    t = language(request).gettext
    title = TITLES.get(status, TITLES[500] if status >= 500 else TITLES[400])
    return render(request, "error.html", status_code=status, title=t(title), status=status)


def http_error(request: Request, exc: HTTPException) -> Response:
    """4xx raised by controllers, Litestar (validation, routing) or the CSRF check."""
    status = exc.status_code
    if isinstance(exc, ApiError):
        return _api_error(request, status, exc.code, exc.detail, exc.fields, exc.headers)
    if status >= 500:
        return internal_error(request, exc)
    # The class, not the detail: a validation error's detail quotes the whole query string
    # (search words, a patient's INS).
    log.info(
        "request %s: %s %s -> %s (%s)",
        request_id(request),
        request.method,
        request.url.path,
        status,
        type(exc).__name__,
    )
    if _is_api(request):
        message = exc.detail if status in {400, 405, 413} else CODES.get(status, "error").replace("-", " ")
        if status == 401:
            return _api_error(
                request,
                status,
                "unauthenticated",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="mss"'},
            )
        return _api_error(request, status, CODES.get(status, "error"), message)
    if isinstance(exc, LoginRequired):
        response = redirect(exc.location)
        if exc.clear:
            clear_session_cookie(response)
        return response
    if isinstance(exc, NotAuthorizedException):
        return redirect("/login")
    if isinstance(exc, PermissionDeniedException):
        return _page(request, 403)
    return _page(request, status)


def _login_refused(request: Request, exc: AuthError) -> Response:
    # The same answer for an unknown address, a wrong password and a wrong code.
    if isinstance(exc, EnrolmentRequired):
        return _api_error(request, 403, "enrolment-required", "enrol an authenticator in the web inbox first")
    if isinstance(exc, TooManyAttempts):
        headers = {"Retry-After": str(exc.retry_after)}
        return _api_error(request, 429, "too-many-attempts", exc.message, headers=headers)
    if isinstance(exc, AccountLocked):
        return _api_error(request, 423, "locked", "account temporarily locked after repeated failures")
    if isinstance(exc, StandingError):
        return _api_error(request, 403, exc.code, exc.message)
    return _api_error(request, 401, "bad-credentials", "invalid address, password or code")


def service_error(request: Request, exc: MssError) -> Response:
    """A service error, mapped to HTTP here once for every controller: a message that is not
    in the reader's mailbox or a draft that is not theirs (404), a filter that means nothing
    (400), a read receipt already answered (409), a draft too large to keep (413), a message
    the reader's key cannot open (422), a refused API login (401, 403, 423, 429: the pages
    answer theirs on the login form); anything else no controller expected is a 500."""
    if isinstance(exc, AuthError) and _is_api(request):
        return _login_refused(request, exc)
    if isinstance(exc, (MessageNotFound, DraftNotFound)):
        return _api_error(request, 404, "not-found", "not found") if _is_api(request) else _page(request, 404)
    if isinstance(exc, ReceiptNotPending):
        if _is_api(request):
            return _api_error(
                request, 409, "not-pending", f"no read receipt waits for an answer ({exc.details.get('state')})"
            )
        return _page(request, 409)
    if isinstance(exc, DraftTooLarge):
        if _is_api(request):
            return _api_error(request, 413, "too-large", exc.message)
        return _page(request, 413)
    if isinstance(exc, FilterError) and _is_api(request):
        return _api_error(request, 400, "bad-filter", exc.message)
    if isinstance(exc, DirectoryError) and _is_api(request):
        return _api_error(request, 400, "bad-query", exc.message)
    if isinstance(exc, DecryptionError):
        log.warning(
            "request %s: message cannot be decrypted by its reader (%s)", request_id(request), exc.details.get("reason")
        )
        if _is_api(request):
            return _api_error(request, 422, "undecryptable", "this message cannot be opened with your key")
        t = language(request).gettext
        return render(
            request, "error.html", status_code=422, status=422, title=t("This message cannot be opened with your key.")
        )
    return internal_error(request, exc)


def internal_error(request: Request, exc: Exception) -> Response:
    """Anything else: logged with the correlation id, a plain 500 for the client."""
    log.error(
        "request %s: %s %s failed",
        request_id(request),
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request_id(request)},
    )
    if _is_api(request):
        return _api_error(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal-error", "internal error")
    try:
        return _page(request, 500)
    except Exception:
        log.exception("request %s: the error page failed", request_id(request))
        return Response(
            content="Internal error. Reference: " + request_id(request), status_code=500, media_type=MediaType.TEXT
        )


EXCEPTION_HANDLERS = {HTTPException: http_error, MssError: service_error, Exception: internal_error}
