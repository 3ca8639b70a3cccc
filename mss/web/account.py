"""The account page: change the password (the private key is re-wrapped), reset the second
factor (after asking the password again), what happens to requested read receipts, and the
language switch."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.params import URLEncodedBody

from mss import accounts
from mss.db import session_scope
from mss.errors import AuthError, BadCredentials, PasswordPolicyError
from mss.mailbox import sync
from mss.runtime import Runtime
from mss.web import i18n
from mss.web.auth import LoginRequired, active_session
from mss.web.context import (
    Rt,
    Web,
    config,
    language,
    origin,
    redirect,
    render,
    request_id,
    run,
    set_language_cookie,
    set_session_cookie,
)
from mss.web.sessions import (
    ENROL,
    Live,
    LiveSession,
    SessionInvalid,
    SessionPolicy,
    SessionToken,
    advance_in,
    end_other_sessions,
)


@dataclass
class PasswordChange:
    """The password change form."""

    current: str = ""
    new: str = ""
    confirm: str = ""


@dataclass
class PasswordCheck:
    """A form that only asks the password again."""

    password: str = ""


@dataclass
class ReadReceiptsChoice:
    """The read receipts setting."""

    choice: str = ""


@dataclass
class LanguageChoice:
    """The language switch."""

    lang: str = ""
    next: str = "/"


def _change_password(rt: Runtime, live: LiveSession, old: str, new: str) -> None:
    """The new password, and the end of the sessions the old one opened elsewhere: one
    transaction, so that neither happens without the other."""
    with session_scope(rt.engine) as session:
        accounts.change_password(session, rt.settings, live.address, old, new, actor=live.address)
        end_other_sessions(session, live.address, live.token)


def _read_receipts(rt: Runtime, address: str) -> str:
    with session_scope(rt.engine, readonly=True) as session:
        return accounts.read_receipt_choice(session, address)


def _set_read_receipts(rt: Runtime, address: str, choice: str, request_id: str) -> None:
    with session_scope(rt.engine) as session:
        accounts.set_read_receipt_choice(session, address, choice, actor=address, request_id=request_id)


def _reset_2fa(rt: Runtime, live: LiveSession, policy: SessionPolicy) -> SessionToken:
    """A new TOTP secret, the account's other sessions ended and this one sent to enrol
    again: one transaction. Returns the enrolling session's token."""
    with session_scope(rt.engine) as session:
        accounts.reset_2fa(session, rt.settings, rt.master_key, live.address, actor=live.address, end_sessions=False)
        end_other_sessions(session, live.address, live.token)
        return advance_in(session, live, stage=ENROL, policy=policy)


class AccountController(Controller):
    """Password, second factor and language."""

    include_in_schema = False
    dependencies = {"live": Provide(active_session)}

    async def _page(
        self,
        request: Request,
        address: str,
        *,
        status_code: int = 200,
        notice: str | None = None,
        errors: dict[str, str] | None = None,
    ) -> Response:
        rt = config(request).rt
        remaining = await run(accounts.remaining_recovery_codes, rt.engine, address)
        read_receipts = await run(_read_receipts, rt, address)
        imap_mode = await run(sync.mode_of, rt.engine, address)
        return render(
            request,
            "account.html",
            status_code=status_code,
            user=address,
            notice=notice,
            errors=errors or {},
            remaining=remaining,
            imap_mode=imap_mode,
            read_receipts=read_receipts,
        )

    @get("/account")
    async def account(self, request: Request, live: Live) -> Response:
        """The account page."""
        return await self._page(request, live.address)

    @post("/account/password")
    async def password(self, request: Request, live: Live, rt: Rt, data: URLEncodedBody[PasswordChange]) -> Response:
        """Change the password (the key is re-wrapped); other sessions end."""
        t = language(request).gettext
        if data.new != data.confirm:
            return await self._page(
                request, live.address, status_code=422, errors={"new": t("The two new passwords differ.")}
            )
        try:
            await run(_change_password, rt, live, data.current, data.new)
        except BadCredentials:
            return await self._page(
                request, live.address, status_code=422, errors={"current": t("The current password is wrong.")}
            )
        except PasswordPolicyError:
            return await self._page(
                request,
                live.address,
                status_code=422,
                errors={
                    "new": t(
                        "The new password must have at least 12 characters, not be your address, "
                        "and not repeat the same few characters."
                    )
                },
            )
        # Other browsers logged in with the old password were logged out with the change.
        return await self._page(request, live.address, notice=t("Your password has been changed."))

    @post("/account/read-receipts")
    async def read_receipts(
        self, request: Request, live: Live, rt: Rt, data: URLEncodedBody[ReadReceiptsChoice]
    ) -> Response:
        """Ask, always send or never send the read receipts senders ask for."""
        t = language(request).gettext
        if data.choice not in accounts.READ_RECEIPT_CHOICES:
            return await self._page(
                request, live.address, status_code=422, errors={"read_receipts": t("Choose one of the three answers.")}
            )
        await run(_set_read_receipts, rt, live.address, data.choice, request_id(request))
        return await self._page(request, live.address, notice=t("Your read receipt setting is saved."))

    @post("/account/second-factor")
    async def reset_second_factor(
        self, request: Request, live: Live, rt: Rt, web: Web, data: URLEncodedBody[PasswordCheck]
    ) -> Response:
        """After the password, replace the TOTP secret and enrol again."""
        t = language(request).gettext
        try:
            await run(accounts.authenticate, rt.engine, rt.settings, live.address, data.password, origin(request))
        except AuthError:
            return await self._page(
                request, live.address, status_code=422, errors={"password": t("The password is wrong.")}
            )
        try:
            token = await run(_reset_2fa, rt, live, web.policy)
        except SessionInvalid as exc:  # ended meanwhile (another tab logged out): nothing reset
            raise LoginRequired("session ended meanwhile") from exc
        response = redirect("/login/enrol")
        set_session_cookie(response, token)
        return response

    @post("/language")
    async def choose_language(self, request: Request, data: URLEncodedBody[LanguageChoice]) -> Response:
        """Remember the chosen language and go back."""
        response = redirect(data.next or "/")
        if data.lang in i18n.LANGUAGES:
            set_language_cookie(response, data.lang)
        return response
