"""The reading pages: folders, a message, its attachments and the documents they hold.

Controllers translate HTTP to ``mss.mailbox`` calls and back; the rules live there. Every
blocking call (database, decryption, signature check) runs in a worker thread, document
parsing in a worker process (``mss.documents.workers``), and a page that renders a CDA is
rendered in a worker thread. A message or attachment that is not in the reader's mailbox is a 404, the same as
one that does not exist.
"""

from __future__ import annotations

import urllib.parse
from datetime import date, datetime, timedelta
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath
from litestar.response import Response as RawResponse

from mss import mailbox
from mss.db import utcnow
from mss.documents import workers
from mss.errors import DocumentError, ReceiptNotPending
from mss.mailbox import FilterError, Filters, MessageNotFound
from mss.mailbox.content import decode_text
from mss.mailbox.items import DOC_TYPES, limits_of, queue_id_of
from mss.web import cda_view
from mss.web.auth import current_session
from mss.web.context import config, language, redirect, render, request_id, run
from mss.web.security import ATTACHMENT_CSP, PDF_CSP

FOLDER_PATHS = {"/inbox": mailbox.INBOX, "/sent": mailbox.SENT, "/archive": mailbox.ARCHIVE}
PER_PAGE = 25
# Types a download keeps; anything else goes out as application/octet-stream.
DOWNLOAD_TYPES = {"application/pdf", "text/xml", "application/xml", "application/zip", "text/plain"}


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback name and the exact name in RFC 8187 form."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in filename) or "document"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


def file_response(data: bytes, filename: str, content_type: str, *, inline: bool = False) -> Response:
    """The exact bytes of a document, as a download or (PDF only) shown inline."""
    if inline:
        headers = {
            "content-security-policy": PDF_CSP,
            "x-frame-options": "SAMEORIGIN",
            "content-disposition": content_disposition("inline", filename),
        }
        return RawResponse(content=data, media_type="application/pdf", headers=headers)
    media_type = content_type if content_type in DOWNLOAD_TYPES else "application/octet-stream"
    headers = {
        "content-security-policy": ATTACHMENT_CSP,
        "content-disposition": content_disposition("attachment", filename),
    }
    return RawResponse(content=data, media_type=media_type, headers=headers)


def _date(value: str) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FilterError("dates are written YYYY-MM-DD") from None


def filters_from(params: dict[str, str]) -> Filters:
    """Filters from query parameters. Raises FilterError."""
    return Filters(
        sender=params.get("sender", ""),
        subject=params.get("subject", ""),
        ins=params.get("ins", ""),
        doc_type=params.get("doc_type", ""),
        cda_code=params.get("cda_code", ""),
        date_from=_date(params.get("date_from", "")),
        date_to=_date(params.get("date_to", "")),
        unread_only=params.get("unread", "") in {"1", "on", "true"},
    ).check()


# The last page a listing may ask for: past it, a number no database takes (SQLite's
# integers end at 2**63) would be a server error rather than an empty page.
MAX_PAGE = 100_000


def _page_number(value: str | None) -> int:
    try:
        number = int(value or "1")
    except ValueError:
        return 1
    return min(max(number, 1), MAX_PAGE)


def certificate_ending(rt, live) -> datetime | None:
    """When the session's certificate ends, if that is within ``MSS_CERT_WARNING_DAYS``."""
    ends = live.certificate_not_after
    return ends if ends <= utcnow() + timedelta(days=rt.settings.pki.expiry_warning_days) else None


def _view_context(
    user: str, opened: mailbox.OpenedAttachment, base: str, title: str, kind: str, *, back: str
) -> dict[str, Any]:
    """What the attachment page shows of a document (``base`` is its download URL); the
    renderer for its kind fills in the rest."""
    return {
        "user": user,
        "opened": opened,
        "a": opened.attachment,
        "base": base,
        "title": title,
        "kind": kind,
        "cda": None,
        "entries": None,
        "extras": (),
        "text": None,
        "charset_guess": "",
        "problem": None,
        "download": base,
        "inline": base + "/inline",
        "back": back,
    }


class MailboxController(Controller):
    """Folders, messages and attachments."""

    include_in_schema = False

    @get("/")
    async def home(self, request: Request) -> Response:
        """The inbox."""
        return redirect("/inbox")

    @get(["/inbox", "/sent", "/archive"])
    async def folder(self, request: Request) -> Response:
        """A folder page: filters, one page of messages, newest first."""
        live = await current_session(request)
        rt = config(request).rt
        folder = FOLDER_PATHS[request.url.path]
        params = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
        error = None
        try:
            filters = filters_from(params)
        except FilterError as exc:
            filters, error = Filters(), exc.message
        reader = live.account()
        page = await run(
            mailbox.list_folder, rt, reader, folder, filters, page=_page_number(params.get("page")), per_page=PER_PAGE
        )
        unread = await run(mailbox.unread_count, rt, live.address)
        query = {k: v for k, v in params.items() if k != "page" and v}
        return render(
            request,
            "folder.html",
            user=live.address,
            folder=folder,
            page=page,
            unread=unread,
            error=error,
            params=params,
            query=urllib.parse.urlencode(query),
            doc_types=DOC_TYPES,
            certificate_ends=certificate_ending(rt, live),
        )

    @get("/messages/{queue_id:str}")
    async def message(self, request: Request, queue_id: FromPath[str]) -> Response:
        """A message opened: signature, sender card, text, attachments; the journey when sent."""
        live = await current_session(request)
        rt = config(request).rt
        folder = request.query_params.get("folder")
        try:
            opened = await run(
                mailbox.open_message, rt, live.account(), queue_id, folder=folder, request_id=request_id(request)
            )
        except MessageNotFound as exc:
            raise NotFoundException() from exc
        journey = None
        if opened.folder == mailbox.SENT:
            journey = await run(mailbox.journey, rt, live.address, opened.queue_id)
        unread = await run(mailbox.unread_count, rt, live.address)
        return render(
            request,
            "message.html",
            user=live.address,
            message=opened,
            journey=journey,
            unread=unread,
            folder=opened.folder,
        )

    @post("/messages/{queue_id:str}/read-receipt")
    async def read_receipt(self, request: Request, queue_id: FromPath[str]) -> Response:
        """The reader's answer to a requested read receipt: send it or decline it."""
        live = await current_session(request)
        form = await request.form()
        decision = form.get("decision")
        if decision not in {"send", "decline"}:
            raise ValidationException("decision is send or decline")
        try:
            await run(
                mailbox.answer_read_receipt,
                config(request).rt,
                live.account(),
                queue_id,
                send=decision == "send",
                request_id=request_id(request),
            )
        except MessageNotFound as exc:
            raise NotFoundException() from exc
        except ReceiptNotPending:
            pass  # answered already (another tab, a double click): the page says how
        return redirect(f"/messages/{queue_id_of(queue_id) or ''}")

    @post("/messages/{queue_id:str}/archive")
    async def archive(self, request: Request, queue_id: FromPath[str]) -> Response:
        """Move a received message to the archive."""
        return await self._move(request, queue_id, mailbox.ARCHIVE)

    @post("/messages/{queue_id:str}/unarchive")
    async def unarchive(self, request: Request, queue_id: FromPath[str]) -> Response:
        """Put an archived message back in the inbox."""
        return await self._move(request, queue_id, mailbox.INBOX)

    async def _move(self, request: Request, queue_id: FromPath[str], to: str) -> Response:
        live = await current_session(request)
        try:
            await run(mailbox.move, config(request).rt, live.address, queue_id, to=to, request_id=request_id(request))
        except MessageNotFound as exc:
            raise NotFoundException() from exc
        return redirect("/inbox" if to == mailbox.ARCHIVE else "/archive")

    @post("/messages/{queue_id:str}/unread")
    async def unread(self, request: Request, queue_id: FromPath[str]) -> Response:
        """Mark a message unread again."""
        live = await current_session(request)
        try:
            await run(mailbox.mark_unread, config(request).rt, live.address, queue_id)
        except MessageNotFound as exc:
            raise NotFoundException() from exc
        return redirect("/inbox")

    # -- attachments ---------------------------------------------------------------------

    async def _attachment(
        self, request: Request, queue_id: FromPath[str], index: int, action: str
    ) -> mailbox.OpenedAttachment:
        live = await current_session(request)
        try:
            return await run(
                mailbox.open_attachment,
                config(request).rt,
                live.account(),
                queue_id,
                index,
                action=action,
                request_id=request_id(request),
            )
        except MessageNotFound as exc:
            raise NotFoundException() from exc

    @get("/messages/{queue_id:str}/attachments/{index:int}")
    async def download(self, request: Request, queue_id: FromPath[str], index: FromPath[int]) -> Response:
        """An attachment's exact bytes, as a download."""
        opened = await self._attachment(request, queue_id, index, "attachment.download")
        a = opened.attachment
        return file_response(a.data, a.filename, a.content_type)

    @get("/messages/{queue_id:str}/attachments/{index:int}/inline")
    async def inline(self, request: Request, queue_id: FromPath[str], index: FromPath[int]) -> Response:
        """A PDF attachment shown in the browser (framed by its view page)."""
        opened = await self._attachment(request, queue_id, index, "attachment.view")
        a = opened.attachment
        if a.kind != "pdf":
            raise NotFoundException()
        return file_response(a.data, a.filename, "application/pdf", inline=True)

    @get("/messages/{queue_id:str}/attachments/{index:int}/embedded")
    async def embedded(self, request: Request, queue_id: FromPath[str], index: FromPath[int]) -> Response:
        """The PDF body of a level-1 CDA attachment, inline."""
        opened = await self._attachment(request, queue_id, index, "attachment.view")
        a = opened.attachment
        return await self._embedded(request, a.kind, a.data, a.filename)

    async def _embedded(self, request: Request, kind: str, data: bytes, filename: str) -> Response:
        """The PDF body of a level-1 CDA, shown inline."""
        if kind != "cda":
            raise NotFoundException()
        try:
            pdf = await run(mailbox.embedded_pdf, config(request).rt, data, filename)
        except DocumentError as exc:
            raise NotFoundException() from exc
        if pdf is None:
            raise NotFoundException()
        name = filename.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".pdf"
        return file_response(pdf, name, "application/pdf", inline=True)

    @get("/messages/{queue_id:str}/attachments/{index:int}/media/{n:int}")
    async def media(
        self, request: Request, queue_id: FromPath[str], index: FromPath[int], n: FromPath[int]
    ) -> Response:
        """A PDF or image a CDA attachment carries, inline."""
        opened = await self._attachment(request, queue_id, index, "attachment.view")
        a = opened.attachment
        return await self._media(request, a.kind, a.data, a.filename, n)

    async def _media(self, request: Request, kind: str, data: bytes, filename: str, n: int) -> Response:
        """A file embedded in a CDA: a PDF for the viewer, or an image checked by its content."""
        if kind != "cda":
            raise NotFoundException()
        try:
            found = await run(mailbox.embedded_file, config(request).rt, data, filename, n)
        except DocumentError as exc:
            raise NotFoundException() from exc
        if found is None:
            raise NotFoundException()
        content_type, content = found
        stem = filename.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if content_type == "application/pdf":
            return file_response(content, f"{stem}-{n}.pdf", content_type, inline=True)
        headers = {
            "content-security-policy": ATTACHMENT_CSP,
            "content-disposition": content_disposition("inline", stem),
        }
        return RawResponse(content=content, media_type=content_type, headers=headers)

    @get("/messages/{queue_id:str}/attachments/{index:int}/view")
    async def view(self, request: Request, queue_id: FromPath[str], index: FromPath[int]) -> Response:
        """An attachment's page: PDF frame, rendered CDA, IHE_XDM listing or text."""
        live = await current_session(request)
        opened = await self._attachment(request, queue_id, index, "attachment.view")
        a = opened.attachment
        base = f"/messages/{opened.queue_id}/attachments/{a.index}"
        context = _view_context(live.address, opened, base, a.filename, a.kind, back=f"/messages/{opened.queue_id}")
        await self._fill_view(request, context, a.kind, a.data, a.filename)
        # A CDA's narrative can be long: the page is rendered off the event loop.
        return await run(render, request, "attachment.html", **context)

    async def _fill_view(self, request: Request, context: dict, kind: str, data: bytes, filename: str) -> None:
        rt = config(request).rt
        t = language(request).gettext
        try:
            if kind == "cda":
                context["cda"] = await run(
                    workers.parse_cda, data, filename=filename, limits=limits_of(rt), owner=context["user"]
                )
            elif kind == "xdm":
                info, context["entries"] = await run(mailbox.xdm_entries, rt, context["a"], context["user"])
                context["extras"] = info.extras
            elif kind == "text":
                context["text"], context["charset_guess"] = decode_text(data, None)
        except DocumentError:
            context["problem"] = t("This document cannot be displayed; download it to open it with another program.")

    @get("/messages/{queue_id:str}/attachments/{index:int}/documents/{doc:int}")
    async def xdm_download(
        self, request: Request, queue_id: FromPath[str], index: FromPath[int], doc: FromPath[int]
    ) -> Response:
        """A document of an IHE_XDM package, as a download."""
        entry, data = await self._xdm(request, queue_id, index, doc, "attachment.download")
        return file_response(
            data, entry.path.rsplit("/", 1)[-1], "application/pdf" if entry.kind == "pdf" else "text/xml"
        )

    @get("/messages/{queue_id:str}/attachments/{index:int}/documents/{doc:int}/inline")
    async def xdm_inline(
        self, request: Request, queue_id: FromPath[str], index: FromPath[int], doc: FromPath[int]
    ) -> Response:
        """A PDF of an IHE_XDM package, inline."""
        entry, data = await self._xdm(request, queue_id, index, doc, "attachment.view")
        if entry.kind != "pdf":
            raise NotFoundException()
        return file_response(data, entry.path.rsplit("/", 1)[-1], "application/pdf", inline=True)

    @get("/messages/{queue_id:str}/attachments/{index:int}/documents/{doc:int}/embedded")
    async def xdm_embedded(
        self, request: Request, queue_id: FromPath[str], index: FromPath[int], doc: FromPath[int]
    ) -> Response:
        """The PDF body of a level-1 CDA inside an IHE_XDM package, inline."""
        entry, data = await self._xdm(request, queue_id, index, doc, "attachment.view")
        return await self._embedded(request, entry.kind, data, entry.path)

    @get("/messages/{queue_id:str}/attachments/{index:int}/documents/{doc:int}/media/{n:int}")
    async def xdm_media(
        self, request: Request, queue_id: FromPath[str], index: FromPath[int], doc: FromPath[int], n: FromPath[int]
    ) -> Response:
        """A PDF or image a CDA inside an IHE_XDM package carries, inline."""
        entry, data = await self._xdm(request, queue_id, index, doc, "attachment.view")
        return await self._media(request, entry.kind, data, entry.path, n)

    @get("/messages/{queue_id:str}/attachments/{index:int}/documents/{doc:int}/view")
    async def xdm_view(
        self, request: Request, queue_id: FromPath[str], index: FromPath[int], doc: FromPath[int]
    ) -> Response:
        """A document of an IHE_XDM package, rendered."""
        live = await current_session(request)
        opened = await self._attachment(request, queue_id, index, "attachment.view")
        entry, data = await self._xdm_of(request, opened, doc)
        base = f"/messages/{opened.queue_id}/attachments/{index}/documents/{doc}"
        back = f"/messages/{opened.queue_id}/attachments/{index}/view"
        context = _view_context(live.address, opened, base, entry.title, entry.kind, back=back)
        await self._fill_view(request, context, entry.kind, data, entry.path)
        return await run(render, request, "attachment.html", **context)

    async def _xdm(self, request: Request, queue_id: FromPath[str], index: int, doc: int, action: str):
        opened = await self._attachment(request, queue_id, index, action)
        return await self._xdm_of(request, opened, doc)

    async def _xdm_of(self, request: Request, opened: mailbox.OpenedAttachment, doc: int):
        if opened.attachment.kind != "xdm":
            raise NotFoundException()
        try:
            return await run(mailbox.xdm_document, config(request).rt, opened.attachment, doc)
        except (MessageNotFound, DocumentError) as exc:
            raise NotFoundException() from exc


TEMPLATE_HELPERS = {
    "narrative": cda_view.narrative_html,
    "hl7_time": cda_view.hl7_time,
    "hl7_date": cda_view.hl7_date,
    "hl7_when": cda_view.hl7_when,
    "person": cda_view.person,
    "organisation": cda_view.organisation,
    "author_name": cda_view.author_name,
    "code_label": cda_view.code_label,
    "section_title": cda_view.section_title,
    "media_markup": cda_view.media_markup,
    "media_link": cda_view.media_link,
}
