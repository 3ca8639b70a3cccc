"""Logging in and out of the web inbox: password, then TOTP (or enrolment), then the inbox.

The password step runs ``accounts.authenticate`` (argon2id, key unwrap, lockout, audit) in a
worker thread and opens a *pending* session holding the unwrapped key sealed under a fresh
session key. The second step checks a TOTP code (``accounts.verify_totp``: replay guard,
lockout, audit) or a recovery code, and replaces the session by an active one: the cookie
changes at each step. An account without an enrolled authenticator goes through the
enrolment page (QR code, then a first code, then its recovery codes, shown once).
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException
from litestar.params import URLEncodedBody

from mss import accounts, audit
from mss.addresses import MAX_ADDRESS
from mss.db import session_scope
from mss.errors import AccountLocked, AuthError, BadTotp, NoSuchAccount, TooManyAttempts
from mss.runtime import Runtime
from mss.web import twofactor
from mss.web.context import (
    Rt,
    Web,
    clear_session_cookie,
    config,
    language,
    origin,
    redirect,
    render,
    request_id,
    run,
    session_token,
    set_session_cookie,
)
from mss.web.messages import login_refusal
from mss.web.sessions import (
    ACTIVE,
    ENROL,
    TOTP,
    WEB,
    Live,
    LiveSession,
    SessionInvalid,
    SessionPolicy,
    SessionToken,
    advance_in,
    end_session,
    load_session,
    open_session,
    purge_expired,
)


@dataclass
class PasswordForm:
    """The login form's first step."""

    address: str = ""
    password: str = ""


@dataclass
class CodeForm:
    """A TOTP or recovery code form."""

    code: str = ""


STEP_PAGES = {TOTP: "/login/totp", ENROL: "/login/enrol", ACTIVE: "/inbox"}


class LoginRequired(NotAuthorizedException):
    """The page needs a session at another stage: go to ``location`` (the login page, or the
    login step the session is at); ``clear`` when the cookie names no live session."""

    def __init__(self, reason: str, *, location: str = "/login", clear: bool = True) -> None:
        super().__init__(detail=reason)
        self.location = location
        self.clear = clear


async def current_session(request: Request, stage: str = ACTIVE) -> LiveSession:
    """The request's web session at ``stage``. Raises LoginRequired."""
    web = config(request)
    try:
        live = await run(
            load_session,
            web.rt.engine,
            session_token(request),
            policy=web.policy,
            channel=WEB,
            settings=web.rt.settings,
        )
    except SessionInvalid as exc:
        raise LoginRequired(exc.reason) from exc
    if live.stage != stage:
        raise LoginRequired("wrong login stage", location=STEP_PAGES[live.stage], clear=False)
    return live


async def active_session(request: Request) -> LiveSession:
    """The request's logged-in web session (the ``live`` dependency of the pages). Raises
    LoginRequired."""
    return await current_session(request, ACTIVE)


async def totp_session(request: Request) -> LiveSession:
    """The request's session waiting for its second factor. Raises LoginRequired."""
    return await current_session(request, TOTP)


async def enrol_session(request: Request) -> LiveSession:
    """The request's session enrolling its authenticator. Raises LoginRequired."""
    return await current_session(request, ENROL)


async def optional_session(request: Request) -> LiveSession | None:
    """The request's active web session, or None."""
    try:
        return await current_session(request)
    except LoginRequired:
        return None


async def _locked_out(request: Request, live: LiveSession) -> Response:
    """The account locked during the second step: end the half-open session, say so."""
    await run(end_session, config(request).rt.engine, live.token)
    t = language(request).gettext
    response = render(
        request,
        "login.html",
        status_code=423,
        address=live.address,
        error=t("This account is locked for a while after repeated failures. Try again later."),
    )
    clear_session_cookie(response)
    return response


class AuthController(Controller):
    """Login (password, second factor, enrolment) and logout pages."""

    include_in_schema = False

    @get("/login")
    async def login_page(self, request: Request) -> Response:
        """The login form (the inbox when already logged in)."""
        if await optional_session(request) is not None:
            return redirect("/inbox")
        return render(request, "login.html", address="", error=None)

    @post("/login")
    async def login(self, request: Request, rt: Rt, web: Web, data: URLEncodedBody[PasswordForm]) -> Response:
        """Check the password, open a pending session, go to the second factor."""
        address = data.address.strip().lower()
        try:
            unlocked = await run(
                accounts.authenticate,
                rt.engine,
                rt.settings,
                address,
                data.password,
                origin(request),
                completes_login=False,
            )
        except AuthError as exc:
            status, error = login_refusal(language(request), exc)
            response = render(request, "login.html", status_code=status, address=address[:MAX_ADDRESS], error=error)
            if isinstance(exc, TooManyAttempts):
                response.headers["Retry-After"] = str(exc.retry_after)
            return response
        await run(purge_expired, rt.engine, policy=web.policy)
        await run(end_session, rt.engine, session_token(request))
        confirmed = await run(accounts.totp_confirmed, rt.engine, unlocked.address)
        stage = TOTP if confirmed else ENROL
        token = await run(open_session, rt.engine, account=unlocked, channel=WEB, stage=stage, policy=web.policy)
        response = redirect("/login/totp" if confirmed else "/login/enrol")
        set_session_cookie(response, token)
        return response

    @get("/login/totp", dependencies={"live": Provide(totp_session)})
    async def totp_page(self, request: Request, live: Live) -> Response:
        """The second-factor form."""
        return render(request, "totp.html", address=live.address, error=None)

    @post("/login/totp", dependencies={"live": Provide(totp_session)})
    async def totp(self, request: Request, live: Live, rt: Rt, web: Web, data: URLEncodedBody[CodeForm]) -> Response:
        """Check a TOTP or recovery code; the session becomes active (new cookie)."""
        t = language(request).gettext
        try:
            token = await run(
                accounts.check_second_factor,
                rt.engine,
                rt.settings,
                rt.master_key,
                live.address,
                data.code,
                origin(request),
                then=lambda session: advance_in(session, live, stage=ACTIVE, policy=web.policy),
            )
        except SessionInvalid as exc:  # ended meanwhile: the code stays unused
            raise LoginRequired("session ended meanwhile") from exc
        except BadTotp:
            return render(
                request,
                "totp.html",
                status_code=401,
                address=live.address,
                error=t("The code is wrong, expired or already used."),
            )
        except AccountLocked:
            return await _locked_out(request, live)
        response = redirect("/inbox")
        set_session_cookie(response, token)
        return response

    @get("/login/enrol", dependencies={"live": Provide(enrol_session)})
    async def enrol_page(self, request: Request, live: Live, rt: Rt) -> Response:
        """The enrolment page: QR code and key."""
        return await self._enrol_form(request, live, rt, error=None, status_code=200)

    async def _enrol_form(
        self, request: Request, live: LiveSession, rt: Runtime, *, error: str | None, status_code: int
    ) -> Response:
        t = language(request).gettext
        try:
            enrolment = await run(accounts.pending_enrolment, rt.engine, rt.settings, rt.master_key, live.address)
        except (BadTotp, NoSuchAccount) as exc:
            await run(end_session, rt.engine, live.token)
            raise LoginRequired("no enrolment pending") from exc
        return render(
            request,
            "enrol.html",
            status_code=status_code,
            address=live.address,
            error=error,
            qr=twofactor.qr_svg(enrolment.otpauth_uri, t("QR code to scan with your authenticator app")),
            secret=twofactor.secret_of(enrolment.otpauth_uri),
            issuer=rt.settings.security.totp_issuer,
        )

    @post("/login/enrol", dependencies={"live": Provide(enrol_session)})
    async def enrol(self, request: Request, live: Live, rt: Rt, web: Web, data: URLEncodedBody[CodeForm]) -> Response:
        """Confirm enrolment with a first code; show the recovery codes once."""
        t = language(request).gettext
        code = "".join(data.code.split())
        try:
            if not (code.isascii() and code.isdigit()) or len(code) != 6:
                raise BadTotp("a TOTP code has six digits")
            codes, token = await run(_enrolled, rt, live, code, origin(request), web.policy)
        except SessionInvalid as exc:  # ended meanwhile: the code stays unused, no codes are made
            raise LoginRequired("session ended meanwhile") from exc
        except BadTotp:
            return await self._enrol_form(
                request, live, rt, error=t("The code is wrong, expired or already used."), status_code=401
            )
        except AccountLocked:
            return await _locked_out(request, live)
        # Rendered directly, not after a redirect: the codes are never stored anywhere in clear.
        response = render(request, "recovery_codes.html", user=live.address, codes=codes, new_session=token)
        set_session_cookie(response, token)
        return response

    @post("/logout")
    async def logout(self, request: Request, rt: Rt) -> Response:
        """End the session on the server and forget the cookie."""
        token = session_token(request)
        live = await optional_session(request)
        await run(end_session, rt.engine, token)
        if live is not None:
            await run(_audit_logout, rt, live.address, request_id(request))
        response = redirect("/login")
        clear_session_cookie(response)
        return response


def _enrolled(
    rt: Runtime, live: LiveSession, code: str, who: accounts.Origin, policy: SessionPolicy
) -> tuple[list[str], SessionToken]:
    """The enrolment confirmed by its first code, with the recovery codes shown once and the
    session moved on: one transaction, or none of it. Raises BadTotp, AccountLocked,
    SessionInvalid (the session ended meanwhile)."""
    return accounts.verify_totp(
        rt.engine,
        rt.settings,
        rt.master_key,
        live.address,
        code,
        who,
        then=lambda session: (
            accounts.new_recovery_codes_in(session, live.address, request_id=who.request_id),
            advance_in(session, live, stage=ACTIVE, policy=policy),
        ),
    )


def _audit_logout(rt, address: str, rid: str) -> None:
    with session_scope(rt.engine) as session:
        audit.record(session, actor=address, action="web.logout", object=address, request_id=rid)
