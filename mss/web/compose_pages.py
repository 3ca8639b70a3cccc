"""Writing pages: the compose form (new, reply, forward), the directory look-up behind its
search-as-you-type field, and sending through ``mss.mailbox.send`` (the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import Provide
from litestar.exceptions import NotFoundException

from directory.search import search
from mss import mailbox, metrics
from mss.db import session_scope
from mss.errors import MssError
from mss.mailbox import Draft, DraftInvalid, KeptAttachment, MessageNotFound, Upload
from mss.mailbox.compose import split_addresses
from mss.runtime import Runtime
from mss.web.auth import active_session
from mss.web.context import Rt, language, redirect, render, request_id, run
from mss.web.i18n import Language
from mss.web.messages import error_text, problem_text, signature_text
from mss.web.sessions import Live

MAX_QUERY = 100


@dataclass
class FormState:
    """What the compose form shows (again, after an error)."""

    to: list[str] = field(default_factory=list)
    subject: str = ""
    body: str = ""
    read_receipt: bool = False
    package_xdm: bool = False
    reply_to: str = ""
    source: str = ""
    keep: list[int] = field(default_factory=list)
    source_attachments: list[mailbox.AttachmentInfo] = field(default_factory=list)
    source_signature: mailbox.Signature | None = None
    source_sender: str = ""


def directory_matches(rt: Runtime, query: str, page: int = 1, per_page: int = 10) -> dict:
    """Active directory entries matching ``query`` (name, RPPS, organisation, city ...)."""
    with session_scope(rt.engine, readonly=True) as session:
        result = search(session, query, page=page, per_page=per_page)
        items = [
            {
                "address": e.address,
                "name": e.display_name,
                "profession": e.profession_label or e.skill_label,
                "organisation": e.org_name,
                "city": e.city,
                "rpps": e.rpps,
            }
            for e in result.items
            if e.status == "active"
        ]
        return {"items": items, "page": result.page, "has_next": result.has_next}


def _quote(lang: Language, opened: mailbox.Opened) -> str:
    who = opened.sender.name if opened.sender else opened.meta.sender
    head = lang.gettext("On %(date)s, %(who)s wrote:", date=opened.meta.date, who=who)
    return head + "\n" + "\n".join("> " + line for line in opened.body.splitlines()) + "\n"


def _prefix(prefix: str, subject: str) -> str:
    """``Re: subject``, without piling up prefixes on a long thread."""
    if subject.lower().startswith(prefix.lower()):
        return subject
    return f"{prefix} {subject}".strip()


def note_for(lang: Language):  # type: ignore[no-untyped-def]
    """The paragraph, in the writer's language, that says whose signature kept files carried."""

    def note(kept: list[KeptAttachment]) -> str:
        """The paragraph for ``kept``."""
        lines = [lang.gettext("Attachments carried over from an earlier message:")]
        for item in kept:
            signer = item.signature.signer_name or item.signature.signer_address or item.sender
            lines.append(
                lang.gettext(
                    "- %(file)s: signed by %(signer)s (%(status)s)",
                    file=item.filename,
                    signer=signer,
                    status=signature_text(lang, item.signature.status),
                )
            )
        return "\n".join(lines)

    return note


class ComposeController(Controller):
    """New message, reply, forward, and the directory look-up."""

    include_in_schema = False
    dependencies = {"live": Provide(active_session)}

    @get("/directory")
    async def directory(self, request: Request, live: Live, rt: Rt) -> dict:
        """Directory entries for the search-as-you-type field (JSON)."""
        query = (request.query_params.get("q") or "").strip()[:MAX_QUERY]
        if len(query) < 2:
            return {"items": [], "page": 1, "has_next": False}
        return await run(directory_matches, rt, query)

    @get("/compose")
    async def compose_page(self, request: Request, live: Live, rt: Rt) -> Response:
        """The compose form, empty or prefilled for a reply or a forward."""
        lang = language(request)
        state = FormState()
        params = request.query_params
        source = params.get("reply") or params.get("forward")
        if source:
            try:
                opened = await run(mailbox.open_message, rt, live.account(), source, request_id=request_id(request))
            except MessageNotFound as exc:
                raise NotFoundException() from exc
            state.source = opened.queue_id
            state.source_attachments = list(opened.attachments)
            state.keep = [a.index for a in opened.attachments]
            state.source_signature = opened.signature
            state.source_sender = opened.sender.name if opened.sender else opened.meta.sender
            if params.get("reply"):
                state.reply_to = opened.queue_id
                state.to = [opened.meta.sender]
                state.subject = _prefix(lang.gettext("Re:"), opened.meta.subject)
                state.body = "\n\n" + _quote(lang, opened)
            else:
                state.subject = _prefix(lang.gettext("Fwd:"), opened.meta.subject)
                state.body = "\n\n" + lang.gettext("Forwarded message") + "\n" + _quote(lang, opened)
        elif params.get("to"):
            state.to = list(split_addresses(params.get("to") or ""))
        return render(request, "compose.html", user=live.address, state=state, errors={}, general=None)

    @post("/compose")
    async def send(self, request: Request, live: Live, rt: Rt) -> Response:
        """Send the form's message through the pipeline; form errors otherwise."""
        lang = language(request)
        form = await request.form()
        to = list(split_addresses(" ".join([*form.getall("to", []), form.get("to_text") or ""])))
        uploads = []
        for item in form.getall("attachments", []):
            if isinstance(item, UploadFile) and item.filename:
                uploads.append(
                    Upload(filename=item.filename, content_type=item.content_type or "", data=await item.read())
                )
        keep = []
        for value in form.getall("keep", []):
            if isinstance(value, str) and value.isdigit():
                keep.append(int(value))
        state = FormState(
            to=to,
            subject=str(form.get("subject") or ""),
            body=str(form.get("body") or ""),
            read_receipt=form.get("read_receipt") == "on",
            package_xdm=form.get("package_xdm") == "on",
            reply_to=str(form.get("reply_to") or ""),
            source=str(form.get("source") or ""),
            keep=keep,
        )
        draft = Draft(
            to=tuple(to),
            subject=state.subject,
            body=state.body,
            attachments=tuple(uploads),
            read_receipt=state.read_receipt,
            package_xdm=state.package_xdm,
            reply_to=state.reply_to or None,
            source=state.source or None,
            keep=tuple(keep) if state.source else (),
        )
        errors: dict[str, list[str]] = {}
        general = None
        try:
            accepted = await run(
                mailbox.send, rt, live.account(), draft, request_id=request_id(request), note=note_for(lang)
            )
        except DraftInvalid as exc:
            metrics.refused("web", "draft-invalid")
            errors = {name: [problem_text(lang, p) for p in problems] for name, problems in exc.errors.items()}
        except MssError as exc:
            metrics.refused("web", type(exc).__name__)
            general = error_text(lang, exc)
        else:
            return redirect(f"/messages/{accepted.queue_id}?folder=sent")
        if state.source:
            try:
                opened = await run(mailbox.open_message, rt, live.account(), state.source)
                state.source_attachments = list(opened.attachments)
                state.source_signature = opened.signature
                state.source_sender = opened.sender.name if opened.sender else opened.meta.sender
            except MessageNotFound:
                state.source, state.keep = "", []
        return render(
            request,
            "compose.html",
            status_code=422,
            user=live.address,
            state=state,
            errors=errors,
            general=general,
            uploads_lost=bool(uploads),
        )
