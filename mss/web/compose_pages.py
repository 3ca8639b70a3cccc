"""Writing pages: the compose form (new, reply, forward, a draft again), sending through
``mss.mailbox.send`` (the pipeline), and the Drafts folder. A send that is refused keeps the
draft, its attachments included (``mss.mailbox.drafts``), so nothing has to be chosen again."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from directory.search import NO_MATCHES, Matches, find_recipients
from mss import mailbox, metrics
from mss.errors import DirectoryError, DraftNotFound, DraftTooLarge, MssError
from mss.mailbox import Draft, DraftInvalid, KeptAttachment, MessageNotFound, Upload
from mss.mailbox.compose import split_addresses
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
    draft_id: str = ""
    draft_files: list[tuple[int, str, int]] = field(default_factory=list)
    """Attachments kept with the draft: index, name, size."""
    draft_keep: list[int] = field(default_factory=list)


def _quote(lang: Language, opened: mailbox.Opened) -> str:
    who = opened.sender.name if opened.sender else opened.meta.sender
    head = lang.gettext("On %(date)s, %(who)s wrote:", date=opened.meta.date, who=who)
    return head + "\n" + "\n".join("> " + line for line in opened.body.splitlines()) + "\n"


def _forwarded(lang: Language, opened: mailbox.Opened) -> str:
    """The forwarded message as mail clients write it: its headers, then its text."""
    who = opened.sender.name if opened.sender else ""
    sender = f"{who} <{opened.meta.sender}>" if who else opened.meta.sender
    lines = [
        "-------- " + lang.gettext("Forwarded message") + " --------",
        lang.gettext("Subject:") + " " + opened.meta.subject,
        lang.gettext("Date:") + " " + opened.meta.date,
        lang.gettext("From:") + " " + sender,
        lang.gettext("To:") + " " + ", ".join(address for address, _card in opened.recipients),
        "",
        opened.body,
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw)\s*:", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(tr|fwd?|wg|rv)\s*:", re.IGNORECASE)


def _prefix(prefix: str, subject: str) -> str:
    """``RE : subject``, without piling up prefixes on a long thread (whatever language
    the earlier ones were written in)."""
    pattern = _FORWARD_PREFIX if _FORWARD_PREFIX.match(prefix) else _REPLY_PREFIX
    if subject.lower().startswith(prefix.lower()) or pattern.match(subject):
        return subject
    return f"{prefix} {subject}".strip()


def note_for(lang: Language):
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


def _form_draft(state: FormState, uploads: list[Upload]) -> Draft:
    return Draft(
        to=tuple(state.to),
        subject=state.subject,
        body=state.body,
        attachments=tuple(uploads),
        read_receipt=state.read_receipt,
        package_xdm=state.package_xdm,
        reply_to=state.reply_to or None,
        source=state.source or None,
        keep=tuple(state.keep) if state.source else (),
    )


def _fill_from_draft(state: FormState, kept: mailbox.KeptDraft) -> None:
    draft = kept.draft
    state.to, state.subject, state.body = list(draft.to), draft.subject, draft.body
    state.read_receipt, state.package_xdm = draft.read_receipt, draft.package_xdm
    state.reply_to, state.source, state.keep = draft.reply_to or "", draft.source or "", list(draft.keep)
    state.draft_id = kept.draft_id
    state.draft_files = [(i, u.filename, len(u.data)) for i, u in enumerate(draft.attachments)]
    state.draft_keep = [i for i, _name, _size in state.draft_files]


class ComposeController(Controller):
    """New message, reply, forward, drafts, and the directory look-up."""

    include_in_schema = False
    dependencies = {"live": Provide(active_session)}

    @get("/directory.json")
    async def directory(self, request: Request, live: Live, rt: Rt) -> Matches:
        """Directory entries for the search-as-you-type fields (JSON), with how many match
        unless ``count=0`` (the compose page's recipient field lists them and counts none)."""
        query = (request.query_params.get("q") or "").strip()[:MAX_QUERY]
        counted = request.query_params.get("count") != "0"
        nothing = NO_MATCHES if counted else replace(NO_MATCHES, total=None)
        if len(query) < 2:
            return nothing
        size = request.query_params.get("per_page") or "10"
        per_page = min(int(size), 20) if size.isascii() and size.isdigit() and int(size) > 0 else 10
        try:
            return await run(find_recipients, rt.engine, query, per_page=per_page, with_total=counted)
        except DirectoryError:
            return nothing

    async def _source(self, request: Request, live: Live, rt: Rt, state: FormState, queue_id: str) -> mailbox.Opened:
        try:
            opened = await run(mailbox.open_message, rt, live.account(), queue_id, request_id=request_id(request))
        except MessageNotFound as exc:
            raise NotFoundException() from exc
        state.source = opened.queue_id
        state.source_attachments = list(opened.attachments)
        state.source_signature = opened.signature
        state.source_sender = opened.sender.name if opened.sender else opened.meta.sender
        return opened

    @get("/compose")
    async def compose_page(self, request: Request, live: Live, rt: Rt) -> Response:
        """The compose form: empty, prefilled for a reply or a forward, or a draft again."""
        lang = language(request)
        state = FormState()
        params = request.query_params
        notice = None
        if params.get("draft"):
            kept = await run(mailbox.open_draft, rt, live.account(), params.get("draft") or "")
            _fill_from_draft(state, kept)
            if state.source:
                try:
                    await self._source(request, live, rt, state, state.source)
                except NotFoundException:
                    state.source, state.keep = "", []
            if params.get("saved"):
                notice = lang.gettext("Your draft is saved, with its attachments, in Drafts.")
        elif params.get("reply"):
            opened = await self._source(request, live, rt, state, params.get("reply") or "")
            state.reply_to = opened.queue_id
            state.to = [opened.meta.sender]
            state.subject = _prefix(lang.gettext("Re:"), opened.meta.subject)
            state.body = "\n\n" + _quote(lang, opened)
            state.keep = []  # a reply offers the documents back, unchecked
        elif params.get("forward"):
            opened = await self._source(request, live, rt, state, params.get("forward") or "")
            state.subject = _prefix(lang.gettext("Fwd:"), opened.meta.subject)
            state.body = "\n\n" + _forwarded(lang, opened)
            state.keep = [a.index for a in opened.attachments]  # a forward carries the documents
        elif params.get("to"):
            state.to = list(split_addresses(params.get("to") or ""))
        return render(request, "compose.html", user=live.address, state=state, errors={}, general=None, notice=notice)

    @post("/compose")
    async def send(self, request: Request, live: Live, rt: Rt) -> Response:
        """Send the form's message through the pipeline (or keep it as a draft); when the
        send is refused, the form comes back with its errors and the draft is kept."""
        lang = language(request)
        form = await request.form()
        to = list(split_addresses(" ".join([*form.getall("to", []), form.get("to_text") or ""])))
        uploads = []
        for item in form.getall("attachments", []):
            if isinstance(item, UploadFile) and item.filename:
                uploads.append(
                    Upload(filename=item.filename, content_type=item.content_type or "", data=await item.read())
                )

        def numbers(name: str) -> list[int]:
            return [int(v) for v in form.getall(name, []) if isinstance(v, str) and v.isascii() and v.isdigit()]

        state = FormState(
            to=to,
            subject=str(form.get("subject") or ""),
            body=str(form.get("body") or ""),
            read_receipt=form.get("read_receipt") == "on",
            package_xdm=form.get("package_xdm") == "on",
            reply_to=str(form.get("reply_to") or ""),
            source=str(form.get("source") or ""),
            keep=numbers("keep"),
            draft_id=str(form.get("draft_id") or ""),
        )
        draft_keep = numbers("draft_keep")
        # The files kept with the draft that are still ticked come first, then the new ones.
        files: list[Upload] = []
        if state.draft_id:
            try:
                kept = await run(mailbox.open_draft, rt, live.account(), state.draft_id)
            except DraftNotFound:
                state.draft_id = ""  # discarded meanwhile (another tab): the form is what counts
            else:
                files = [u for i, u in enumerate(kept.draft.attachments) if i in draft_keep]
        files += uploads
        draft = _form_draft(state, files)
        account = live.account()
        rid = request_id(request)

        if form.get("action") == "save":
            saved = await run(mailbox.save_draft, rt, account, draft, draft_id=state.draft_id or None, request_id=rid)
            return redirect(f"/compose?draft={saved}&saved=1")

        errors: dict[str, list[str]] = {}
        general = None
        try:
            accepted = await rt.messages.run(
                mailbox.send_from_draft,
                rt,
                account,
                draft,
                draft_id=state.draft_id or None,
                request_id=rid,
                note=note_for(lang),
            )
        except DraftInvalid as exc:
            metrics.refused("web", "draft-invalid")
            errors = {name: [problem_text(lang, p) for p in problems] for name, problems in exc.errors.items()}
        except MssError as exc:
            metrics.refused("web", type(exc).__name__)
            general = error_text(lang, exc)
        else:
            return redirect(f"/messages/{accepted.queue_id}?folder=sent")

        # Refused: keep everything the writer gave, files included, as a draft.
        kept_draft = True
        try:
            state.draft_id = await run(
                mailbox.save_draft, rt, account, draft, draft_id=state.draft_id or None, request_id=rid
            )
        except DraftTooLarge:
            kept_draft = False
        if kept_draft:
            state.draft_files = [(i, u.filename, len(u.data)) for i, u in enumerate(files)]
            state.draft_keep = [i for i, _name, _size in state.draft_files]
        if state.source:
            try:
                await self._source(request, live, rt, state, state.source)
            except NotFoundException:
                state.source, state.keep = "", []
        return render(
            request,
            "compose.html",
            status_code=422,
            user=live.address,
            state=state,
            errors=errors,
            general=general,
            notice=None,
            kept_draft=kept_draft,
            uploads_lost=bool(uploads) and not kept_draft,
        )

    @get("/drafts")
    async def drafts(self, request: Request, live: Live, rt: Rt) -> Response:
        """The Drafts folder: what is not sent yet, the latest first."""
        found = await run(mailbox.list_drafts, rt, live.account())
        unread = await run(mailbox.unread_count, rt, live.address)
        return render(request, "drafts.html", user=live.address, drafts=found, folder="drafts", unread=unread)

    @post("/drafts/{draft_id:str}/discard")
    async def discard(self, request: Request, live: Live, rt: Rt, draft_id: FromPath[str]) -> Response:
        """Delete a draft and its files."""
        await run(mailbox.discard_draft, rt, live.address, draft_id, request_id=request_id(request))
        return redirect("/drafts")
