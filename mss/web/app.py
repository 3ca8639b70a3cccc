"""The web app factory: pages, JSON API, static files, security middleware, error handlers.

``create_app(rt)`` is the only place where the web inbox is put together; it takes the
process's ``Runtime`` (settings, database, master key) and holds no state of its own
beside it, so several web processes can serve the same database.
"""

from __future__ import annotations

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

from mss import health
from mss.runtime import Runtime
from mss.web import i18n
from mss.web.account import AccountController
from mss.web.admin_pages import AdminController
from mss.web.api import API_CONTROLLERS
from mss.web.auth import AuthController
from mss.web.certificate_pages import CertificateController
from mss.web.compose_pages import ComposeController
from mss.web.context import Rt, WebConfig, run
from mss.web.directory_pages import DirectoryController
from mss.web.errors import EXCEPTION_HANDLERS
from mss.web.mail_clients import MailClientController
from mss.web.messages import SIGNATURE_STATUSES, signature_reason, signature_text, step_text
from mss.web.pages import TEMPLATE_HELPERS, MailboxController
from mss.web.security import CsrfMiddleware, security_headers
from mss.web.sessions import SessionPolicy

STATIC = i18n.HERE / "static"
# A multipart upload of a message at the size limit, with room for the form around it.
BODY_MARGIN = 1_000_000


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Liveness: the process answers (no database access, nothing to log in for)."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(rt: Rt) -> Response[dict[str, object]]:
    """Readiness: database reachable with this code's schema, CA and CRL loaded and fresh
    (the CRL listing every revocation), master key present
    (200), or 503 naming the items that fail. Details (paths, dates) stay in ``mss doctor``:
    this answer is public."""
    checks = await run(health.readiness, rt.settings, rt.engine)
    ready = all(check.ok for check in checks)
    body: dict[str, object] = {
        "status": "ready" if ready else "not-ready",
        "checks": {check.name: "ok" if check.ok else "failing" for check in checks},
    }
    return Response(content=body, status_code=200 if ready else 503)


def create_app(rt: Runtime, *, policy: SessionPolicy | None = None, debug: bool = False) -> Litestar:
    """The web inbox and its API for ``rt``; ``policy`` sets session lifetimes (tests)."""
    languages = i18n.load_languages()
    for language in languages.values():
        language.env.globals.update(TEMPLATE_HELPERS)
        language.env.globals["signature_text"] = lambda status, _l=language: signature_text(_l, status)
        language.env.globals["signature_reason"] = lambda reason, _l=language: signature_reason(_l, reason)
        language.env.globals["step_text"] = lambda status, _l=language: step_text(_l, status)
        language.env.globals["signature_statuses"] = SIGNATURE_STATUSES
    web = WebConfig(rt=rt, policy=policy or SessionPolicy(), languages=languages)
    openapi = OpenAPIConfig(
        title="mss web API",
        version="1",
        description=(
            "The mailbox of a health professional: list and read messages (signature status, "
            "attachments), download attachments, send, follow receipts. Log in with POST "
            "/api/v1/sessions (address, password, TOTP code) and send the token as "
            "`Authorization: Bearer <token>`."
        ),
        path="/api/v1/schema",
        render_plugins=[JsonRenderPlugin()],
        components=Components(security_schemes={"BearerToken": SecurityScheme(type="http", scheme="bearer")}),
    )
    return Litestar(
        # What every handler may be given instead of fetching it: the process's runtime and
        # the web's configuration; controllers add the logged-in session (``live``).
        dependencies={
            "rt": Provide(lambda: rt, sync_to_thread=False, use_cache=True),
            "web": Provide(lambda: web, sync_to_thread=False, use_cache=True),
        },
        route_handlers=[
            AuthController,
            MailboxController,
            ComposeController,
            AccountController,
            CertificateController,
            MailClientController,
            DirectoryController,
            AdminController,
            *API_CONTROLLERS,
            healthz,
            readyz,
            create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False),
        ],
        middleware=[DefineMiddleware(CsrfMiddleware)],
        before_send=[security_headers],
        # Litestar types each handler by its exact exception class; ours take the MssError base
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi,
        request_max_body_size=rt.settings.relay.max_message_size * 2 + BODY_MARGIN,
        state=State({"web": web}),
        debug=debug,
        logging_config=None,
    )
