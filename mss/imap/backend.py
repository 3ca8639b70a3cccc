"""pymap's session interface over the mailbox services: every call translates, none decides.

pymap parses commands and writes responses; a ``MailSession`` answers each operation by
calling ``mss.mailbox.sync`` (UIDs, flags, copies, moves, expunges, openings) and
``mss.mailbox.served`` (what a client receives), in worker threads since they block. A
message is a ``MailMessage``: its UID, flags and arrival; its content is loaded per message
while its FETCH response is written, so a FETCH of a whole folder holds a few messages at a
time (the one written and those decrypted ahead). Listings (ENVELOPE, BODYSTRUCTURE,
RFC822.SIZE, header fields, SEARCH) are answered from the sealed metadata (``HeaderOnly``);
only a body section decrypts (``Decrypted``).

Every body fetched is a ``message.open`` event committed before a byte of it is sent. The
openings of several FETCH commands can be committed at once (``open_ahead``: the connection
read them ahead in what the client pipelined); the bodies are decrypted ahead of the one
being written (``PREFETCH``), while the openings commit and the responses are written, their
envelopes opened a few at a time in worker processes (``mss.imap.workers``).
"""

from __future__ import annotations

import asyncio
import email.parser
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from pymap.bytes import Writeable
from pymap.concurrent import Event
from pymap.exceptions import MailboxNotFound, MailboxReadOnly
from pymap.flags import FlagOp, PermanentFlags, SessionFlags
from pymap.interfaces.message import CachedMessage, MessageInterface
from pymap.interfaces.session import SessionInterface
from pymap.listtree import ListTree
from pymap.mailbox import MailboxSnapshot
from pymap.message import BaseLoadedMessage, BaseMessage
from pymap.mime import MessageContent
from pymap.parsing.message import AppendMessage
from pymap.parsing.primitives import List, Nil, String
from pymap.parsing.response.code import AppendUid, CopyUid
from pymap.parsing.response.fetch import BodyStructure, ContentBodyStructure, TextBodyStructure, _ParamsList
from pymap.parsing.specials import FetchAttribute, FetchRequirement, ObjectId, SearchKey, SequenceSet
from pymap.parsing.specials.flag import Answered, Deleted, Flag, Flagged, Seen
from pymap.search import SearchCriteriaSet, SearchParams
from pymap.selected import SelectedMailbox
from sqlalchemy.exc import SQLAlchemyError

from mss.accounts import UnlockedAccount
from mss.imap import replies, workers
from mss.mailbox import served, sync
from mss.mailbox.sync import FolderState, ItemState
from mss.mime import PARSE_FAILURES, POLICY
from mss.runtime import Runtime

# IMAP names of the folders, and their RFC 6154 special-use attributes.
NAMES = {"INBOX": sync.INBOX, "Sent": sync.SENT, "Archive": sync.ARCHIVE}
SPECIAL_USE = {"Sent": [b"Sent"], "Archive": [b"Archive"]}  # pymap adds the backslash
DELIMITER = "/"
PERMANENT_FLAGS = frozenset({Seen, Flagged, Answered, Deleted})
_FLAG_NAMES = {Seen: "seen", Flagged: sync.FLAGGED, Answered: sync.ANSWERED, Deleted: sync.DELETED}
_HEADER_SPECIFIERS = (b"HEADER", b"HEADER.FIELDS", b"HEADER.FIELDS.NOT")
PREFETCH = 4  # bodies decrypted ahead of the one being written (held in memory meanwhile) ...
OPEN_TOGETHER = 4  # ... their envelopes opened a few in one task of a worker process
ROWS_AHEAD = 16  # stored messages read at once for the bodies to write next ...
ROWS_BYTES = 1 << 20  # ... as long as their envelopes fit in this many bytes

log = logging.getLogger("mss.imap")


def folder_of(name: str) -> str:
    """Our folder for an IMAP mailbox name (INBOX in any case). Raises MailboxNotFound."""
    if name.upper() == "INBOX":
        return sync.INBOX
    folder = NAMES.get(name)
    if folder is None:
        raise MailboxNotFound(name)
    return folder


def name_of(folder: str) -> str:
    return next(name for name, value in NAMES.items() if value == folder)


def needs_body(attributes: Iterable[FetchAttribute]) -> bool:
    """True when a FETCH asks for a body section (then the message is opened and decrypted)."""
    for attr in attributes:
        value = attr.value
        if value in (b"RFC822", b"RFC822.TEXT", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"):
            return True
        if value in (b"BODY", b"BODY.PEEK") and attr.section is not None:
            section = attr.section
            if section.parts or section.specifier not in _HEADER_SPECIFIERS:
                return True
    return False


def _disposition(header: Any) -> Any:
    """RFC 3501 body-fld-dsp: ``("attachment" ("filename" "x"))`` (pymap writes a string)."""
    if header is None:
        return Nil()
    return List([String.build(header.content_disposition), _ParamsList(dict(header.params))])


class _Content(ContentBodyStructure):
    """pymap's structure of a single part, with body-fld-dsp as RFC 3501 writes it."""

    disposition_at = 8  # the place of body-fld-dsp in the extension data

    @property
    def extended(self) -> List:
        items = list(super().extended.value)
        items[self.disposition_at] = _disposition(self.content_disposition)
        return List(items)


class _Text(_Content, TextBodyStructure):
    disposition_at = 9  # after body-fld-lines


def _structure(content: MessageContent, body_size: int, body_lines: int) -> BodyStructure:
    """The BODYSTRUCTURE of a single-part served message: sizes of its body alone."""
    parsed = content.header.parsed
    ctype = content.body.content_type
    params = dict(ctype.params)
    # RFC 3501 body-fields after the type: parameters, id, description, encoding, size (and
    # pymap's extension data: disposition, language, location).
    fields = (
        parsed.content_disposition,
        parsed.content_language,
        parsed.content_location,
        parsed.content_id,
        parsed.content_description,
        parsed.content_transfer_encoding,
        None,
        body_size,
    )
    if ctype.maintype == "text":
        return _Text(ctype.subtype, params, *fields, body_lines)
    return _Content(ctype.maintype, ctype.subtype, params, *fields)


class _Kept(BodyStructure):
    """A multipart BODYSTRUCTURE kept from the message's first opening."""

    def __init__(self, extended: bytes) -> None:
        super().__init__("multipart", "mixed", None, None, None, None)
        self._bytes = extended

    @property
    # pymap declares it as an attribute; computed here from the kept bytes
    def extended(self) -> Writeable:  # type: ignore[override]
        return Writeable.wrap(self._bytes)

    def __bytes__(self) -> bytes:
        return self._bytes


class HeaderOnly(BaseLoadedMessage):
    """A message known from its metadata: header fields, sizes, structure; no body."""

    def __init__(
        self, message: MessageInterface, requirement: FetchRequirement, shape: served.Shape, searchable: str
    ) -> None:
        super().__init__(message, requirement, MessageContent.parse(shape.header))
        self._shape = shape
        self._searchable = searchable.lower()

    def get_size(self, section: Sequence[int] | None = None) -> int:
        return self._shape.size if not section else 0

    def get_body_structure(self) -> BodyStructure:
        if self._shape.structure:
            return _Kept(self._shape.structure.encode("latin-1"))
        return _structure(self.content, self._shape.body_size, self._shape.body_lines)

    def contains(self, value: bytes) -> bool:
        # SEARCH TEXT/BODY: the header fields and what the metadata tells (subject, document
        # names); a message's content is never decrypted for a search.
        needle = value.decode("utf-8", "replace").lower()
        return needle in self._searchable or value.lower() in bytes(self.content.header).lower()


class Decrypted(BaseLoadedMessage):
    """A message with its served bytes (decrypted, or the envelope in end-to-end mode),
    MIME-parsed only when a part of it is asked for: ``BODY[]`` is the bytes as they are."""

    def __init__(
        self, message: MessageInterface, requirement: FetchRequirement, data: bytes, structure: str | None
    ) -> None:
        super().__init__(message, requirement, None)
        self._data = data
        self._structure = structure  # the BODYSTRUCTURE kept for a multipart entity

    @property
    def content(self) -> MessageContent:
        if self._content is None:
            self._content = MessageContent.parse(self._data)
        return self._content

    def __bytes__(self) -> bytes:
        return self._data

    def get_body(self, section: Sequence[int] | None = None, binary: bool = False) -> Writeable:
        if not section and not binary:
            return Writeable.wrap(self._data)
        return super().get_body(section, binary)

    def get_size(self, section: Sequence[int] | None = None) -> int:
        return super().get_size(section) if section else len(self._data)

    def get_body_structure(self) -> BodyStructure:
        if self._structure:
            return _Kept(self._structure.encode("latin-1"))
        if self.content.body.content_type.maintype == "multipart":
            return super().get_body_structure()
        body = bytes(self.content.body)
        return _structure(self.content, len(body), _lines(body))


def _given(entity: bytes | None) -> Callable[[bytes, UnlockedAccount], bytes | None]:
    """An opener for ``sync.render`` that hands over the content of an envelope opened
    already (None when it was not)."""
    return lambda _envelope, _reader: entity


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Marks the outcome of a body decrypted ahead as seen (it may never be used)."""
    if not task.cancelled():
        task.exception()


def _multipart_structure(message: MessageInterface, requirement: FetchRequirement, data: bytes) -> str | None:
    """The BODYSTRUCTURE of a multipart entity, to keep with the message (None for a
    single part: it is computed again from the metadata)."""
    content = MessageContent.parse(data)
    if content.body.content_type.maintype != "multipart":
        return None
    return bytes(BaseLoadedMessage(message, requirement, content).get_body_structure().extended).decode("latin-1")


def _lines(body: bytes) -> int:
    if not body:
        return 0
    return body.count(b"\n") + (0 if body.endswith(b"\n") else 1)


class MailMessage(BaseMessage):
    """One message of the selected folder: UID, flags, arrival; content on demand."""

    __slots__ = ["item", "_session"]

    def __init__(self, item: ItemState, session: MailSession, *, expunged: bool = False) -> None:
        flags = {
            flag
            for flag, on in (
                (Seen, item.seen),
                (Flagged, item.flagged),
                (Answered, item.answered),
                (Deleted, item.deleted),
            )
            if on
        }
        super().__init__(item.uid, item.arrived, flags, expunged=expunged)
        self.item = item
        self._session = session

    async def load_content(self, requirement: FetchRequirement) -> BaseLoadedMessage:
        return await self._session.load(self, requirement)


def _ours(pairs: Iterable[tuple[int, CachedMessage]]) -> list[tuple[int, MailMessage]]:
    """pymap's cache of a selected mailbox holds the MailMessage objects this backend gave it."""
    return [(seq, cast(MailMessage, message)) for seq, message in pairs]


class MailSession(SessionInterface):
    """An authenticated IMAP session of one account (its key is held here, nowhere else)."""

    def __init__(self, rt: Runtime, account: UnlockedAccount, request_id: str) -> None:
        super().__init__()
        self.rt = rt
        self.account = account
        self.request_id = request_id
        self.fetch_attributes: Sequence[FetchAttribute] = ()
        self._states: dict[str, FolderState] = {}
        self._details: dict[int, sync.Details] = {}
        # FETCH commands still to run whose openings are already committed, in order: their
        # sequence set, the messages it named then, and the folder's version then.
        self._recorded: deque[tuple[SequenceSet, list[tuple[int, MailMessage]], int]] = deque()
        self._version = 0  # bumped whenever the selected folder's messages are replaced or added
        self._plan: deque[int] = deque()  # bodies to write next, not yet being decrypted
        # The bodies planned, in order, and each one's first place among them.
        self._planned: tuple[list[int], dict[int, int]] = ([], {})
        self._rows: dict[int, sync.Stored] = {}  # read with an earlier body, not served yet
        self._rows_lock = threading.Lock()
        # Bodies being decrypted, in order: each one's row id, the task that renders it with
        # others, and its place in that task's results.
        self._decrypting: deque[tuple[int, asyncio.Future[list[sync.Served | None]], int]] = deque()

    # -- SessionInterface basics --

    @property
    def owner(self) -> str:
        return self.account.address

    @property
    def filter_set(self) -> None:
        return None

    def close(self) -> None:
        self._details.clear()
        self._plan.clear()
        self._decrypting.clear()
        self._rows = {}

    async def cleanup(self) -> None:
        pass

    async def _call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except sync.UnknownFolder as exc:
            raise MailboxNotFound(str(exc)) from exc
        except sync.SyncError as exc:
            raise replies.Cannot(exc.message) from exc

    @property
    def mode(self) -> str:
        return self._mode

    async def begin(self) -> MailSession:
        self._mode = await asyncio.to_thread(sync.mode_of, self.rt.engine, self.owner)
        return self

    # -- folders --

    async def _state(self, folder: str) -> FolderState:
        state = await self._call(sync.folder_state, self.rt.engine, self.owner, folder, self._mode)
        self._states[folder] = state
        return state

    def _snapshot(self, state: FolderState, readonly: bool) -> MailboxSnapshot:
        unseen = [i for i, item in enumerate(state.items, 1) if not item.seen]
        return MailboxSnapshot(
            ObjectId(f"{state.folder}-{state.uid_validity}".encode()),
            readonly,
            state.uid_validity,
            PERMANENT_FLAGS,
            frozenset(),
            len(state.items),
            0,
            len(unseen),
            unseen[0] if unseen else None,
            state.uid_next,
        )

    def _messages(self, state: FolderState) -> list[MailMessage]:
        return [MailMessage(item, self) for item in state.items]

    async def _refresh(self, selected: SelectedMailbox | None, *, force: bool = False) -> SelectedMailbox | None:
        """Bring the selected folder up to date when anything changed in it (any door, any process)."""
        if selected is None:
            return None
        folder = selected.lookup
        known = self._states.get(folder)
        if not force and known is not None:
            current = await self._call(sync.poll, self.rt.engine, self.owner, folder)
            if current == known.fingerprint:
                return selected
            if await self._appended(selected, known, current):
                return selected
        state = await self._state(folder)
        selected.set_messages(self._messages(state))
        self._version += 1
        return selected

    async def _refreshed_after_change(self, selected: SelectedMailbox) -> SelectedMailbox:
        """The selected folder read again after a change this command committed (flags,
        an expunge, a move, the \\Seen of a fetch). The change holds whatever happens here: a
        database that cannot be read now is logged and the folder is read whole at the
        client's next command (its news come then), rather than an error for a change that
        was made, which the client would make again."""
        try:
            refreshed = await self._refresh(selected, force=True)
        except SQLAlchemyError as exc:
            log.error(
                "a folder could not be read again after a committed change (%s); its next command reads it",
                type(exc).__name__,
            )
            self._states.pop(selected.lookup, None)
            return selected
        assert refreshed is not None
        return refreshed

    async def _appended(self, selected: SelectedMailbox, known: FolderState, current: tuple[int, ...]) -> bool:
        """New mail only (the common change, what IDLE waits for): read the new rows alone."""
        newest = max((item.item_id for item in known.items), default=0)
        fresh = await self._call(sync.folder_state, self.rt.engine, self.owner, known.folder, self._mode, after=newest)
        count, unread, ids, changes = known.fingerprint
        added = fresh.items
        expected = (
            count + len(added),
            unread + sum(1 for item in added if not item.seen),
            ids + sum(item.item_id for item in added),
            changes,
        )
        if not added or fresh.fingerprint != current or expected != current or fresh.uid_validity != known.uid_validity:
            return False  # something else changed too: the whole folder is read again
        merged = FolderState(
            owner=known.owner,
            folder=known.folder,
            mode=known.mode,
            uid_validity=known.uid_validity,
            uid_next=fresh.uid_next,
            items=tuple(sorted(known.items + added, key=lambda i: i.uid)),
            fingerprint=current,
        )
        self._states[known.folder] = merged
        selected.add_updates([MailMessage(item, self) for item in added], [])
        self._version += 1
        return True

    async def list_mailboxes(
        self, ref_name: str, filter_: str, subscribed: bool = False, selected: SelectedMailbox | None = None
    ) -> tuple[Any, SelectedMailbox | None]:
        if not filter_:
            return [("", DELIMITER, [b"Noselect"])], await self._refresh(selected)
        tree = ListTree(DELIMITER).update(*NAMES)
        found = [
            (entry.name, DELIMITER, [*entry.attributes, *SPECIAL_USE.get(entry.name, [])])
            for entry in tree.list_matching(ref_name, filter_)
        ]
        return found, await self._refresh(selected)

    async def get_mailbox(
        self, name: str, selected: SelectedMailbox | None = None
    ) -> tuple[MailboxSnapshot, SelectedMailbox | None]:
        state = await self._state(folder_of(name))
        return self._snapshot(state, False), await self._refresh(selected)

    async def create_mailbox(self, name: str, selected: SelectedMailbox | None = None) -> Any:
        raise replies.Cannot(replies.FOLDERS_FIXED)

    async def delete_mailbox(self, name: str, selected: SelectedMailbox | None = None) -> Any:
        raise replies.Cannot(replies.FOLDERS_FIXED)

    async def rename_mailbox(self, before_name: str, after_name: str, selected: SelectedMailbox | None = None) -> Any:
        raise replies.Cannot(replies.FOLDERS_FIXED)

    async def subscribe(self, name: str, selected: SelectedMailbox | None = None) -> SelectedMailbox | None:
        folder_of(name)  # every folder is subscribed, always
        return await self._refresh(selected)

    async def unsubscribe(self, name: str, selected: SelectedMailbox | None = None) -> SelectedMailbox | None:
        folder_of(name)
        return await self._refresh(selected)

    async def select_mailbox(self, name: str, readonly: bool = False) -> tuple[MailboxSnapshot, SelectedMailbox]:
        folder = folder_of(name)
        state = await self._state(folder)
        selected = SelectedMailbox(
            ObjectId(f"{folder}-{state.uid_validity}".encode()),
            readonly,
            PermanentFlags(PERMANENT_FLAGS),
            SessionFlags(frozenset()),
            lookup=folder,
        )
        selected.set_messages(self._messages(state))
        self._version += 1
        return self._snapshot(state, readonly), selected

    async def check_mailbox(
        self, selected: SelectedMailbox, *, wait_on: Event | None = None, housekeeping: bool = False
    ) -> SelectedMailbox:
        if wait_on is None:
            refreshed = await self._refresh(selected)
            assert refreshed is not None
            return refreshed
        # IDLE: poll until something changed, the client said DONE, or the account lost
        # its standing (checked at each poll; the connection is then closed).
        before = self._states.get(selected.lookup)
        while not wait_on.is_set():
            await self.check_standing()
            await self._refresh(selected)
            if self._states.get(selected.lookup) is not before:
                break
            await wait_on.wait(timeout=self.rt.settings.imap.poll_seconds)
        return selected

    async def check_standing(self) -> None:
        """Overridden by the connection: ends it when the account may no longer log in."""

    # -- messages --

    async def load(self, message: MailMessage, requirement: FetchRequirement) -> BaseLoadedMessage:
        if not requirement & (FetchRequirement.HEADER | FetchRequirement.BODY):
            return BaseLoadedMessage(message, requirement, None)
        item = message.item
        if requirement & FetchRequirement.BODY and needs_body(self.fetch_attributes):
            result = await self._body(item.item_id)
            structure = None
            if result.facts is not None:
                # A first opening: keep its shape, with the structure of a multipart entity.
                structure = _multipart_structure(message, requirement, result.data)
                await self._call(sync.remember, self.rt, result.facts, structure)
                self._details.pop(item.item_id, None)
            if not structure and self._mode == served.DECRYPTED:
                facts = (await self._detail(item)).facts or {}
                structure = str(facts["structure"]) if facts.get("structure") else None
            return Decrypted(message, requirement, result.data, structure)
        details = await self._detail(item)
        shape = served.shape(details.meta, self._mode, details.cms_size, details.facts)
        if shape is None:
            # Decrypted mode, a message whose shape nobody knows yet: open it once.
            result = await self._call(sync.render, self.rt, self.account, item.item_id, self._mode)
            structure = _multipart_structure(message, requirement, result.data)
            kept = None
            if result.facts is not None:
                kept = await self._call(sync.remember, self.rt, result.facts, structure)
            self._details.pop(item.item_id, None)
            details = await self._detail(item)
            # What was kept, or, when the database would not keep it, what this opening showed.
            shape = served.shape(
                details.meta, self._mode, details.cms_size, details.facts if details.facts is not None else kept
            )
            assert shape is not None
        meta = details.meta
        searchable = " ".join(
            [meta.subject, meta.sender, *meta.recipients_seen_by(self.owner), *(d.filename for d in meta.documents)]
        )
        return HeaderOnly(message, requirement, shape, searchable)

    async def _detail(self, item: ItemState) -> sync.Details:
        found = self._details.get(item.item_id)
        if found is None:
            # One query for the messages after it too (a FETCH 1:* asks for all of them).
            wanted = [item.item_id]
            for folder_state in self._states.values():
                ids = [i.item_id for i in folder_state.items]
                if item.item_id in ids:
                    position = ids.index(item.item_id)
                    wanted = [i for i in ids[position : position + 200] if i not in self._details]
                    break
            self._details.update(await self._call(sync.details, self.rt.engine, self.rt.master_key, wanted))
            found = self._details.get(item.item_id)
            if found is None:
                raise replies.Cannot(replies.EXPUNGED)
        return found

    # -- bodies: openings recorded, then decrypted ahead --

    def _served(self, item_id: int) -> sync.Served:
        return sync.render(
            self.rt, self.account, item_id, self._mode, opener=workers.open_envelope, row=self._row(item_id)
        )

    def _served_together(self, item_ids: list[int]) -> list[sync.Served | None]:
        """Several bodies, their envelopes opened in one task of a worker process; None for
        one that failed (``_body`` renders it again alone, to report its error)."""
        rows = [self._row(item_id) for item_id in item_ids]
        opened: list[bytes | None] = [None] * len(rows)
        if self._mode == served.DECRYPTED:
            found = [(place, row) for place, row in enumerate(rows) if row is not None]
            for (place, _row), entity in zip(
                found, workers.open_envelopes([r.cms for _p, r in found], self.account), strict=True
            ):
                opened[place] = entity
        results: list[sync.Served | None] = []
        for item_id, row, entity in zip(item_ids, rows, opened, strict=True):
            try:
                results.append(sync.render(self.rt, self.account, item_id, self._mode, opener=_given(entity), row=row))
            except Exception:
                results.append(None)
        return results

    def _row(self, item_id: int) -> sync.Stored | None:
        """The stored message of a row, read with those of the bodies planned after it."""
        with self._rows_lock:  # worker threads only
            rows = self._rows
            row = rows.pop(item_id, None)
            if row is None:
                planned, places = self._planned
                place = places.get(item_id, len(planned))
                wanted = [item_id, *(i for i in planned[place + 1 : place + 1 + ROWS_AHEAD] if i not in rows)]
                rows.update(sync.stored(self.rt.engine, self.owner, wanted, budget=ROWS_BYTES))
                row = rows.pop(item_id, None)
        return row

    def _decrypt_ahead(self, item_ids: Iterable[int]) -> None:
        """Decrypt these bodies, in the order their responses will be written, at most
        ``PREFETCH`` at a time ahead of the one being written."""
        planned = list(item_ids)
        places: dict[int, int] = {}
        for place, item_id in enumerate(planned):
            places.setdefault(item_id, place)
        self._planned = (planned, places)
        self._plan = deque(planned)
        self._rows = {}
        self._decrypting.clear()
        self._top_up()

    def _top_up(self) -> None:
        while self._plan and len(self._decrypting) < PREFETCH:
            together = [self._plan.popleft() for _n in range(min(OPEN_TOGETHER, len(self._plan)))]
            task = asyncio.ensure_future(self._call(self._served_together, together))
            task.add_done_callback(_retrieved)
            self._decrypting.extend((item_id, task, place) for place, item_id in enumerate(together))

    async def _body(self, item_id: int) -> sync.Served:
        """The served bytes of a row: decrypted ahead if planned, else now."""
        task, place = None, 0
        if any(planned == item_id for planned, _task, _place in self._decrypting):
            while task is None:
                planned, ahead, at = self._decrypting.popleft()
                if planned == item_id:
                    task, place = ahead, at
        self._top_up()
        result = (await task)[place] if task is not None else None
        if result is None:
            return await self._call(self._served, item_id)
        return result

    def _resolve(self, selected: SelectedMailbox, sets: Sequence[SequenceSet]) -> list[list[tuple[int, MailMessage]]]:
        """The messages each sequence set names, UID sets looked up in one pass (pymap's
        lookup reads the whole folder for each set)."""
        messages = selected.messages
        if len(sets) < 2 or not all(s.uid for s in sets):
            return [_ours(messages.get_all(s)) for s in sets]
        wanted = [s.flatten(messages.max_uid) for s in sets]
        union = frozenset().union(*wanted)
        if not union:
            return [[] for _s in sets]
        found = {msg.uid: (seq, msg) for seq, msg in _ours(messages.get_all(SequenceSet.build(union, uid=True)))}
        return [[found[uid] for uid in sorted(uids) if uid in found] for uids in wanted]

    def opened_ahead(self, sequence_set: SequenceSet) -> bool:
        """True when the openings of the FETCH of ``sequence_set`` were committed ahead."""
        return bool(self._recorded) and self._recorded[0][0] is sequence_set

    async def open_ahead(self, selected: SelectedMailbox, fetches: Sequence[tuple[SequenceSet, bool]]) -> None:
        """Commit at once the openings of several body FETCH commands, in the order they run:
        the one about to run, then those the client pipelined behind it (each a sequence
        set, and whether it sets \\Seen). Their bodies start decrypting meanwhile."""
        chosen = self._resolve(selected, [sequence_set for sequence_set, _seen in fetches])
        item_ids = [m.item.item_id for named in chosen for _seq, m in named]
        seen = [
            m.item.item_id
            for named, (_s, set_seen) in zip(chosen, fetches, strict=True)
            if set_seen
            for _seq, m in named
        ]
        self._recorded.clear()
        self._decrypt_ahead(item_ids)
        await self._record_openings(selected, item_ids, seen)
        self._recorded.extend((s, named, self._version) for (s, _seen), named in zip(fetches, chosen, strict=True))

    async def _record_openings(self, selected: SelectedMailbox, item_ids: list[int], seen: Sequence[int]) -> None:
        """Commit the openings of these bodies (those of ``seen`` displayed: \\Seen set)."""
        await self._call(
            sync.record_openings,
            self.rt,
            self.owner,
            selected.lookup,
            item_ids,
            mode=self._mode,
            seen=seen,
            request_id=self.request_id,
        )

    async def fetch_messages(  # type: ignore[override]  # pymap's state takes None: no updates to look for
        self, selected: SelectedMailbox, sequence_set: SequenceSet, set_seen: bool
    ) -> tuple[Iterable[tuple[int, MessageInterface]], SelectedMailbox | None]:
        recorded: list[tuple[int, MailMessage]] = []
        chosen = None
        if self._recorded and self._recorded[0][0] is sequence_set:
            _s, recorded, version = self._recorded.popleft()
            if version == self._version:
                chosen = recorded
        else:
            self._recorded.clear()
        if chosen is None:
            chosen = _ours(selected.messages.get_all(sequence_set))
        if needs_body(self.fetch_attributes) and chosen:
            # Each body a client fetches is an opening, audited before it is sent; a FETCH
            # that sets \Seen displays the message (read receipt as in the web). Openings
            # committed ahead (open_ahead) are not recorded twice; anything the set names
            # beyond them is, now.
            missing = list(
                (Counter(m.item.item_id for _s, m in chosen) - Counter(m.item.item_id for _s, m in recorded)).elements()
            )
            if missing:
                if not recorded:
                    self._decrypt_ahead(m.item.item_id for _s, m in chosen)
                await self._record_openings(selected, missing, missing if set_seen else ())
        if set_seen:
            await self._refreshed_after_change(selected)
            chosen = [(seq, cast(MailMessage, selected.messages.get(msg.uid) or msg)) for seq, msg in chosen]
        elif sequence_set.uid:
            # Nothing changed in the folder: no need for pymap to compare it (a copy of the
            # whole folder's state per command) to find updates to report.
            return chosen, None
        return chosen, selected

    async def search_mailbox(
        self, selected: SelectedMailbox, keys: frozenset[SearchKey]
    ) -> tuple[Iterable[tuple[int, MessageInterface]], SelectedMailbox]:
        await self._refresh(selected)
        self.fetch_attributes = ()
        requirement = FetchRequirement.reduce(key.requirement for key in keys)
        search = SearchCriteriaSet(keys, SearchParams(selected))
        found: list[tuple[int, MessageInterface]] = []
        for seq, message in _ours(selected.messages.get_all(search.sequence_set)):
            loaded = await message.load_content(requirement)
            if search.matches(seq, message, loaded):
                found.append((seq, message))
        return found, selected

    def _uids(self, selected: SelectedMailbox, sequence_set: SequenceSet) -> list[int]:
        return [uid for _seq, uid in selected.messages.get_uids(sequence_set)]

    async def expunge_mailbox(self, selected: SelectedMailbox, uid_set: SequenceSet | None = None) -> SelectedMailbox:
        if selected.readonly:
            raise MailboxReadOnly()
        uids = None if uid_set is None else self._uids(selected, uid_set)
        await self._call(sync.expunge, self.rt.engine, self.owner, selected.lookup, uids, request_id=self.request_id)
        return await self._refreshed_after_change(selected)

    async def copy_messages(
        self, selected: SelectedMailbox, sequence_set: SequenceSet, mailbox: str
    ) -> tuple[CopyUid | None, SelectedMailbox]:
        return await self._transfer(sync.copy, selected, sequence_set, mailbox), selected

    async def move_messages(
        self, selected: SelectedMailbox, sequence_set: SequenceSet, mailbox: str
    ) -> tuple[CopyUid | None, SelectedMailbox]:
        if selected.readonly:
            raise MailboxReadOnly()
        copy_uid = await self._transfer(sync.move, selected, sequence_set, mailbox)
        return copy_uid, await self._refreshed_after_change(selected)

    async def _transfer(
        self,
        transfer: Callable[..., list[tuple[int, int]]],
        selected: SelectedMailbox,
        sequence_set: SequenceSet,
        mailbox: str,
    ) -> CopyUid | None:
        """``sync.copy`` or ``sync.move`` of the messages of ``sequence_set`` to ``mailbox``;
        the COPYUID of the messages it wrote (None when none)."""
        to = folder_of(mailbox)
        uids = self._uids(selected, sequence_set)
        pairs = await self._call(
            transfer, self.rt.engine, self.owner, selected.lookup, uids, to, request_id=self.request_id
        )
        if not pairs:
            return None
        try:
            state = await self._state(to)
        except SQLAlchemyError as exc:
            # Copied or moved by now: an error would have the client do it again. RFC 4315
            # lets a server that cannot tell leave the COPYUID out of its OK.
            log.error("a folder could not be read after a committed copy (%s): no COPYUID", type(exc).__name__)
            return None
        return CopyUid(state.uid_validity, pairs)

    async def update_flags(
        self,
        selected: SelectedMailbox,
        sequence_set: SequenceSet,
        flag_set: frozenset[Flag],
        mode: FlagOp = FlagOp.REPLACE,
    ) -> tuple[Iterable[tuple[int, MessageInterface]], SelectedMailbox]:
        if selected.readonly:
            raise MailboxReadOnly()
        if mode == FlagOp.REPLACE:
            flags = {name: flag in flag_set for flag, name in _FLAG_NAMES.items()}
        else:
            flags = {name: mode == FlagOp.ADD for flag, name in _FLAG_NAMES.items() if flag in flag_set}
        uids = self._uids(selected, sequence_set)
        if flags and uids:
            await self._call(
                sync.set_flags, self.rt, self.owner, selected.lookup, uids, flags, request_id=self.request_id
            )
        await self._refreshed_after_change(selected)
        wanted = set(uids)
        return [
            (seq, msg) for seq, msg in _ours(selected.messages.get_all(sequence_set)) if msg.uid in wanted
        ], selected

    async def append_messages(
        self, name: str, messages: Sequence[AppendMessage], selected: SelectedMailbox | None = None
    ) -> tuple[AppendUid, SelectedMailbox | None]:
        folder = folder_of(name)
        if folder != sync.SENT:
            raise replies.Cannot(replies.APPEND_ONLY_SENT)
        uids: list[int] = []
        validity = 0
        for message in messages:
            headers = email.parser.BytesHeaderParser(policy=POLICY).parsebytes(message.literal)
            try:
                ident = str(headers.get("Message-ID", "") or "")
            except PARSE_FAILURES:
                # ``Message-ID: <a@`` and the like: no message sent from here has one.
                raise replies.Cannot(replies.APPEND_NOT_SENT) from None
            found = await self._call(sync.find_sent, self.rt.engine, self.owner, ident, self._mode)
            if found is None:
                raise replies.Cannot(replies.APPEND_NOT_SENT)
            validity, uid = found
            uids.append(uid)
        return AppendUid(validity, uids), await self._refresh(selected)
