"""The JSON API under ``/api/v1``: the same mailbox service and checks as the pages.

Authentication: ``POST /api/v1/sessions`` with address, password and a current TOTP code
(or a recovery code) returns a bearer token; send it as ``Authorization: Bearer <token>``.
It is a session like the web's (same idle and absolute timeouts, private key sealed under a
key only the token carries), but of its own kind: a browser cookie is never accepted here
and a bearer token never in the pages, so the API needs no CSRF token. ``DELETE
/api/v1/sessions/current`` ends it. An account must have enrolled its authenticator in the
web inbox first. The OpenAPI schema is at ``/api/v1/schema/openapi.json``.
"""

from __future__ import annotations

import base64
import binascii
import builtins
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Annotated

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from directory.models import EntryCard
from directory.search import find_recipients
from mss import accounts, mailbox
from mss.errors import MssError
from mss.mailbox import Draft, DraftInvalid, Upload
from mss.mailbox.listing import Progress
from mss.mailbox.opening import ReceiptAbout
from mss.web.certificate_pages import published
from mss.web.context import Rt, config, origin, request_id, run
from mss.web.pages import MAX_PAGE, file_response
from mss.web.sessions import (
    ACTIVE,
    API,
    Live,
    LiveSession,
    SessionInvalid,
    SessionToken,
    end_session,
    load_session,
    open_session_in,
)

SECURITY: list[dict[str, list[str]]] = [{"BearerToken": []}]


class ApiError(HTTPException):
    """An API refusal with a machine code, a sentence and, for forms, per-field problems."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        fields: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.fields = fields or {}


# -- bodies ------------------------------------------------------------------------------
# What the mailbox returns in the API's own shape (a correspondent, a signature, a sent
# message's progress, a receipt's subject, a journey's steps) goes out as it is; the records
# below are the requests, and the answers whose shape differs from the mailbox's.


@dataclass
class LoginRequest:
    """Credentials for a bearer token."""

    address: str
    password: str
    code: str
    """A current TOTP code, or one of the recovery codes."""


@dataclass
class SessionOut:
    """A bearer token and when it ends."""

    token: str
    token_type: str
    expires_at: datetime
    idle_timeout_seconds: int


@dataclass
class DocumentOut:
    """A document a message carries."""

    filename: str
    kind: str
    size: int


@dataclass
class SummaryOut:
    """One message of a folder."""

    queue_id: FromPath[str]
    folder: str
    unread: bool
    kind: str
    received_at: datetime
    sender: str
    sender_name: str
    recipients: list[str]
    subject: str
    documents: list[DocumentOut]
    read_receipt_asked: bool
    document_types: list[str]
    """The type of each CDA carried (label, else LOINC code)."""
    progress: Progress | None = None


@dataclass
class MessageListOut:
    """A page of a folder, newest first."""

    folder: str
    items: list[SummaryOut]
    page: int
    per_page: int
    total: int
    pages: int
    unsearched: int


@dataclass(frozen=True)
class AttachmentOut(mailbox.AttachmentInfo):
    """An attachment and where to download it."""

    url: str


@dataclass
class MessageOut:
    """A message opened for its reader."""

    queue_id: FromPath[str]
    folder: str
    kind: str
    received_at: datetime
    subject: str
    date: str
    message_id: str
    sender: mailbox.Correspondent
    recipients: list[mailbox.Correspondent]
    signature: mailbox.Signature
    body: str
    body_was_html: bool
    attachments: list[AttachmentOut]
    body_charset_guess: str | None
    """When the sender's software declared no usable charset: the one the body was read in
    (utf-8, else windows-1252), a guess. None when the message said its own."""
    read_receipt_asked: bool
    displayed_receipt_sent: bool
    """True when this request sent the read receipt (the account's setting is ``always``)."""
    read_receipt: str
    """not-asked, pending (answer with POST .../read-receipt), sent or declined. RFC 8098
    2.1: a read receipt goes out only with the reader's consent; opening a message sends
    one only when the account's setting says always."""
    receipt_about: ReceiptAbout | None = None


@dataclass
class ReadReceiptIn:
    """The reader's answer to a requested read receipt."""

    send: bool
    """True: send the ``displayed`` notification now; false: decline it (not asked again)."""


@dataclass
class ReadReceiptOut:
    """Where the read receipt stands after the answer."""

    read_receipt: str
    """sent or declined."""


@dataclass
class JourneyOut:
    """Where a sent message stands for one recipient."""

    recipient: mailbox.Correspondent
    status: str
    read_receipt_asked: bool
    steps: tuple[mailbox.Step, ...]


@dataclass
class RecipientStatusOut:
    """One recipient's journey, for an integrator: its final status once there is one."""

    recipient: str
    status: str
    final: bool
    final_status: str | None
    steps: tuple[mailbox.Step, ...]


@dataclass
class MessageStatusOut:
    """Where a sent message stands, recipient by recipient."""

    queue_id: str
    recipients: list[RecipientStatusOut]


@dataclass
class AttachmentIn:
    """A file to attach, in base64."""

    filename: str
    content_base64: str
    content_type: str = "application/octet-stream"


@dataclass
class SendRequest:
    """A message to send."""

    to: list[str]
    subject: str = ""
    body: str = ""
    attachments: list[AttachmentIn] = field(default_factory=list)
    read_receipt: bool = False
    package_xdm: bool = False
    """Package the CDA attachments as one IHE_XDM.ZIP."""
    reply_to: str | None = None
    """Queue id of the message answered."""
    source: str | None = None
    """Queue id of the message whose attachments ``keep`` takes."""
    keep: list[int] = field(default_factory=list)


@dataclass
class SentOut:
    """The queue id and Message-ID of a message sent."""

    queue_id: FromPath[str]
    message_id: str


@dataclass
class CertificateOut:
    """An entry's current S/MIME certificate, to encrypt to it from a mail client."""

    address: str
    name: str
    subject: str
    issuer: str
    serial: str
    """Hexadecimal."""
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    """Colon-separated hex pairs, as mail clients show it."""
    pem: str
    der_base64: str


@dataclass
class DirectoryOut:
    """A page of directory results."""

    items: list[EntryCard]
    page: int
    has_next: bool


# -- converters --------------------------------------------------------------------------


def _correspondent(address: str, card: mailbox.Correspondent | None) -> mailbox.Correspondent:
    return card or mailbox.Correspondent(address)


def _summary(item: mailbox.Summary) -> SummaryOut:
    return SummaryOut(
        queue_id=item.queue_id,
        folder=item.folder,
        unread=item.unread,
        kind=item.kind,
        received_at=item.at,
        sender=item.sender,
        sender_name=item.sender_name,
        recipients=list(item.recipients),
        subject=item.subject,
        documents=[DocumentOut(d.filename, d.kind, d.size) for d in item.documents],
        read_receipt_asked=item.read_receipt_asked,
        document_types=list(item.document_types),
        progress=item.progress,
    )


def _message(m: mailbox.Opened) -> MessageOut:
    return MessageOut(
        queue_id=m.queue_id,
        folder=m.folder,
        kind=m.kind,
        received_at=m.at,
        subject=m.meta.subject,
        date=m.meta.date,
        message_id=m.meta.message_id,
        sender=_correspondent(m.meta.sender, m.sender),
        recipients=[_correspondent(a, c) for a, c in m.recipients],
        signature=m.signature,
        body=m.body,
        body_was_html=m.body_was_html,
        attachments=[
            AttachmentOut(**asdict(a), url=f"/api/v1/messages/{m.queue_id}/attachments/{a.index}")
            for a in m.attachments
        ],
        body_charset_guess=m.charset_guess or None,
        read_receipt_asked=m.meta.mdn_to is not None,
        displayed_receipt_sent=m.displayed_sent,
        read_receipt=m.read_receipt,
        receipt_about=m.receipt_about,
    )


# -- authentication ----------------------------------------------------------------------


def bearer_token(request: Request) -> SessionToken | None:
    """The session token of the Authorization header, or None."""
    scheme, _space, value = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return SessionToken.decode(value.strip())


async def api_session(request: Request) -> LiveSession:
    """The bearer token's live session. Raises ApiError 401 (with the standing's reason
    when the account may no longer log in)."""
    web = config(request)
    try:
        return await run(
            load_session, web.rt.engine, bearer_token(request), policy=web.policy, channel=API, settings=web.rt.settings
        )
    except SessionInvalid as exc:
        raise ApiError(
            401,
            exc.reason if exc.standing else "unauthenticated",
            exc.message if exc.standing else "a valid bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="mss"'},
        ) from exc


def _login(request: Request, data: LoginRequest) -> SessionOut:
    web = config(request)
    rt = web.rt
    # A refusal (an AuthError) is answered by mss.web.errors, like every service error.
    token = accounts.login_with_code(
        rt.engine,
        rt.settings,
        rt.master_key,
        data.address,
        data.password,
        data.code,
        origin(request, "api"),
        then=lambda session, unlocked: open_session_in(
            session, account=unlocked, channel=API, stage=ACTIVE, policy=web.policy
        ),
    )
    return SessionOut(
        token=token.encode(),
        token_type="Bearer",
        expires_at=datetime.now().astimezone() + web.policy.absolute,
        idle_timeout_seconds=int(web.policy.idle.total_seconds()),
    )


class SessionController(Controller):
    """Bearer tokens."""

    path = "/api/v1/sessions"
    tags = ["sessions"]

    @post("/", status_code=HTTP_201_CREATED, summary="Log in (password + TOTP) and get a bearer token")
    async def create(self, request: Request, data: JSONBody[LoginRequest]) -> SessionOut:
        """Log in with password and TOTP code; returns a bearer token."""
        return await run(_login, request, data)

    @delete(
        "/current",
        status_code=HTTP_204_NO_CONTENT,
        summary="Log out (the token stops working)",
        security=SECURITY,
        dependencies={"live": Provide(api_session)},
    )
    async def destroy(self, live: Live, rt: Rt) -> None:
        """End this token's session."""
        await run(end_session, rt.engine, live.token)


def _date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "bad-filter", "dates are written YYYY-MM-DD") from None


class BearerController(Controller):
    """The API's controllers that need a bearer token: every handler is given ``live``."""

    security = SECURITY
    dependencies = {"live": Provide(api_session)}


class MessagesController(BearerController):
    """Folders, messages, attachments, receipts and sending."""

    path = "/api/v1/messages"
    tags = ["messages"]

    @get("/", summary="List a folder, newest first, with filters")
    async def list(
        self,
        live: Live,
        rt: Rt,
        folder: Annotated[str, QueryParameter(description="inbox, sent or archive")] = "inbox",
        page: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, QueryParameter(ge=1, le=100)] = 25,
        sender: Annotated[str, QueryParameter(description="words (or beginnings) of the sender address or names")] = "",
        subject: Annotated[str, QueryParameter(description="words (or their beginnings) of the subject")] = "",
        ins: Annotated[str, QueryParameter(description="patient INS")] = "",
        doc_type: Annotated[str, QueryParameter(description="pdf, cda, xdm or receipt")] = "",
        cda_code: Annotated[str, QueryParameter(description="CDA type code, e.g. 11490-0")] = "",
        date_from: Annotated[str | None, QueryParameter(description="YYYY-MM-DD")] = None,
        date_to: Annotated[str | None, QueryParameter(description="YYYY-MM-DD")] = None,
        unread: FromQuery[bool] = False,
    ) -> MessageListOut:
        """A page of a folder, with filters."""
        if folder not in mailbox.FOLDERS:
            raise ApiError(400, "bad-folder", "folder is inbox, sent or archive")
        filters = mailbox.Filters(
            sender=sender,
            subject=subject,
            ins=ins,
            doc_type=doc_type,
            cda_code=cda_code,
            date_from=_date(date_from),
            date_to=_date(date_to),
            unread_only=unread,
        )
        result = await run(mailbox.list_folder, rt, live.account(), folder, filters, page=page, per_page=per_page)
        return MessageListOut(
            folder=result.folder,
            items=[_summary(i) for i in result.items],
            page=result.page,
            per_page=result.per_page,
            total=result.total,
            pages=result.pages,
            unsearched=result.unsearched,
        )

    @get(
        "/{queue_id:str}",
        summary="Read a message (marks it read; a requested read receipt follows the account's setting)",
    )
    async def read(
        self, request: Request, live: Live, rt: Rt, queue_id: FromPath[str], folder: FromQuery[str | None] = None
    ) -> MessageOut:
        """Open a message (marks it read; a requested read receipt is sent, declined or left
        pending as the account's setting says: ``read_receipt`` tells which)."""
        opened = await run(
            mailbox.open_message, rt, live.account(), queue_id, folder=folder, request_id=request_id(request)
        )
        return _message(opened)

    @post(
        "/{queue_id:str}/read-receipt",
        status_code=200,
        summary="Answer a requested read receipt: send it or decline it (409 when none waits for an answer)",
    )
    async def read_receipt(
        self, request: Request, live: Live, rt: Rt, queue_id: FromPath[str], data: JSONBody[ReadReceiptIn]
    ) -> ReadReceiptOut:
        """Send or decline the read receipt a received message asks for."""
        state = await run(
            mailbox.answer_read_receipt, rt, live.account(), queue_id, send=data.send, request_id=request_id(request)
        )
        return ReadReceiptOut(read_receipt=state)

    @get(
        "/{queue_id:str}/attachments/{index:int}",
        summary="Download an attachment (original bytes)",
        media_type="application/octet-stream",
    )
    async def attachment(
        self, request: Request, live: Live, rt: Rt, queue_id: FromPath[str], index: FromPath[int]
    ) -> Response:
        """An attachment's exact bytes."""
        opened = await run(mailbox.open_attachment, rt, live.account(), queue_id, index, request_id=request_id(request))
        a = opened.attachment
        return file_response(a.data, a.filename, a.content_type)

    @get("/{queue_id:str}/receipts", summary="Per recipient of a sent message: delivered, processed, read, failed")
    async def receipts(self, live: Live, rt: Rt, queue_id: FromPath[str]) -> builtins.list[JourneyOut]:
        """The journey of a sent message, per recipient."""
        journeys = await run(mailbox.journey, rt, live.address, queue_id)
        return [
            JourneyOut(
                recipient=_correspondent(j.address, j.correspondent),
                status=j.status,
                read_receipt_asked=j.read_receipt_asked,
                steps=j.steps,
            )
            for j in journeys
        ]

    @get("/{queue_id:str}/status", summary="Machine-readable status of a sent message: each recipient's journey")
    async def status(self, live: Live, rt: Rt, queue_id: FromPath[str]) -> MessageStatusOut:
        """Each recipient's steps (delivered, relayed, delayed, processed, displayed,
        failed) with times, and its final status (failed, processed or delivered) once it
        has one (``final`` false while it waits)."""
        journeys = await run(mailbox.journey, rt, live.address, queue_id)
        return MessageStatusOut(
            queue_id=queue_id.strip().upper(),
            recipients=[
                RecipientStatusOut(
                    recipient=j.address,
                    status=j.status,
                    final=j.final_status is not None,
                    final_status=j.final_status,
                    steps=j.steps,
                )
                for j in journeys
            ],
        )

    @post("/{queue_id:str}/archive", status_code=HTTP_204_NO_CONTENT, summary="Move a received message to the archive")
    async def archive(self, request: Request, live: Live, rt: Rt, queue_id: FromPath[str]) -> None:
        """Archive a received message."""
        await self._move(request, live, rt, queue_id, mailbox.ARCHIVE)

    @post("/{queue_id:str}/unarchive", status_code=HTTP_204_NO_CONTENT, summary="Move it back to the inbox")
    async def unarchive(self, request: Request, live: Live, rt: Rt, queue_id: FromPath[str]) -> None:
        """Put an archived message back in the inbox."""
        await self._move(request, live, rt, queue_id, mailbox.INBOX)

    async def _move(self, request: Request, live: Live, rt: Rt, queue_id: str, to: str) -> None:
        await run(mailbox.move, rt, live.address, queue_id, to=to, request_id=request_id(request))

    @post("/", status_code=HTTP_201_CREATED, summary="Send a message (signed and encrypted by the service)")
    async def send(self, request: Request, live: Live, rt: Rt, data: JSONBody[SendRequest]) -> SentOut:
        """Send a message through the pipeline."""
        uploads = []
        for item in data.attachments:
            try:
                content = base64.b64decode(item.content_base64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ApiError(
                    422,
                    "invalid",
                    "an attachment is not valid base64",
                    fields={"attachments": [f"{item.filename}: not valid base64"]},
                ) from exc
            uploads.append(Upload(filename=item.filename, content_type=item.content_type, data=content))
        draft = Draft(
            to=tuple(a.strip().lower() for a in data.to),
            subject=data.subject,
            body=data.body,
            attachments=tuple(uploads),
            read_receipt=data.read_receipt,
            package_xdm=data.package_xdm,
            reply_to=data.reply_to,
            source=data.source,
            keep=tuple(data.keep) if data.source else (),
        )
        try:
            accepted = await rt.messages.run(mailbox.send, rt, live.account(), draft, request_id=request_id(request))
        except DraftInvalid as exc:
            raise ApiError(
                422,
                "invalid",
                "the message cannot be sent as it is",
                fields={k: [str(p) for p in v] for k, v in exc.errors.items()},
            ) from exc
        except MssError as exc:
            raise ApiError(422, "refused", exc.message) from exc
        return SentOut(queue_id=accepted.queue_id, message_id=accepted.message_id)


class DirectoryController(BearerController):
    """Who can receive: the directory's active entries."""

    path = "/api/v1/directory"
    tags = ["directory"]

    @get("/", summary="Search the directory by name, RPPS, organisation or city")
    async def search(
        self,
        live: Live,
        rt: Rt,
        q: Annotated[str, QueryParameter(min_length=2, max_length=100)],
        page: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 1,
    ) -> DirectoryOut:
        """Search the directory."""
        # The answer has no count of matches: none is asked (it can cost more than the page).
        found = await run(find_recipients, rt.engine, q, page=page, per_page=20, with_total=False)
        return DirectoryOut(items=found.items, page=found.page, has_next=found.has_next)

    @get("/{address:str}/certificate", summary="The current S/MIME certificate of an entry (PEM and DER)")
    async def certificate(self, live: Live, rt: Rt, address: FromPath[str]) -> CertificateOut:
        """An active entry's current certificate; 404 when it has none or may not receive."""
        found = await published(rt, address)
        return CertificateOut(
            address=found.address,
            name=found.name,
            subject=found.subject,
            issuer=found.issuer,
            serial=found.serial,
            not_before=found.not_before,
            not_after=found.not_after,
            fingerprint_sha256=found.fingerprint_sha256,
            pem=found.pem,
            der_base64=base64.b64encode(found.der).decode("ascii"),
        )


API_CONTROLLERS = [SessionController, MessagesController, DirectoryController]
