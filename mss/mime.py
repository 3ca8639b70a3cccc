"""Reading MIME parts of the ``email`` package with the types they have here.

``Message.get_payload`` returns bytes, text, a message or a list depending on the part and
its arguments; ``decoded_payload`` and ``subparts`` name the two cases the code reads.
``SUMMARY_HEADERS`` names the header fields that say what a message is. ``parse_bytes`` is
the ``email`` package's parser made to read long base64 bodies at the speed of C,
``base64_lines`` writes a MIME body in base64 and ``has_bare_cr`` finds a CR outside a CRLF.
``POLICY`` and ``SMTP_POLICY`` are the email package's ``default`` and ``SMTP`` policies
with header classes made once (``HeaderClasses``): every message the service reads or
writes goes through one of them. Importing this module also spares the parser a regular
expression compiled for each multipart (``FeedparserPatterns``).
"""

from __future__ import annotations

import email.feedparser
import email.policy
import re
import secrets
from collections.abc import Iterator
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.policy import Policy

import pybase64

# What the email package's parsers raise on some malformed values instead of noting a
# defect: "Message-ID: <a@" (IndexError), "Reply-To: , .<:/" (TypeError), "From: .<-"
# (AttributeError), "Cc: \\@[" followed by a tab (UnboundLocalError), a path "<" in SMTP,
# "Date: Mon, 1 Jan 99999999999 00:00:00 +0000" (OverflowError).
# Whoever reads a field or an address of a message from outside catches all of them.
PARSE_FAILURES = (ValueError, LookupError, TypeError, AttributeError, UnboundLocalError, OverflowError)

# The header fields that say what a message is and where it belongs: who wrote it to whom,
# its subject and date, its place in a thread, and whether a read receipt is asked for. The
# reader sees them; a message to another operator carries them outside its S/MIME body.
SUMMARY_HEADERS = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Disposition-Notification-To",
)


class HeaderClasses(HeaderRegistry):
    """The email package's header registry, with the class of each kind of field made once.

    ``HeaderRegistry`` makes a new class (``type(...)``) for every field it parses or sets,
    which costs more than parsing a short field (about a quarter of reading a referral's
    fields) and leaves a reference cycle to the collector. The class depends only on the
    kind of field (``registry``, ``default_class``) and the ``base_class``, so the one made
    for a kind serves every field of that kind."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:
            # Made twice at worst by two threads at once: either class serves.
            made = self._made[kind] = super().__getitem__(name)
        return made


HEADER_CLASSES = HeaderClasses()
# email.policy.default and email.policy.SMTP, with HEADER_CLASSES.
POLICY = email.policy.default.clone(header_factory=HEADER_CLASSES)
SMTP_POLICY = email.policy.SMTP.clone(header_factory=HEADER_CLASSES)


# The pattern email.feedparser compiles for the boundary of each multipart it reads, around
# the escaped separator ("--" and the boundary).
_BOUNDARY_OPENS = "(?P<sep>"
_BOUNDARY_CLOSES = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_AFTER_SEPARATOR = re.compile(_BOUNDARY_CLOSES[1:])
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)  # re.escape puts a backslash before each special character


class BoundaryLine:
    """Matches a line as the feedparser's pattern for one boundary does: the separator
    itself, then the same pattern as the rest of it, compiled once for every boundary."""

    __slots__ = ("separator",)

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return _AFTER_SEPARATOR.match(line, len(self.separator))


class FeedparserPatterns:
    """What ``email.feedparser`` takes for the ``re`` module: ``re``, except that the pattern
    of a multipart's boundary becomes a ``BoundaryLine``.

    The parser compiles that pattern for every multipart it reads, and a boundary is new
    with each message, so ``re``'s cache never has it: compiling it costs about 140 us a
    multipart (more than parsing a short part), and each new pattern pushes a used one out
    of the cache. The parser reads only the ``end`` and ``linesep`` groups of a match,
    which ``BoundaryLine`` gives the same."""

    def __getattr__(self, name: str) -> object:
        return getattr(re, name)

    def compile(self, pattern: str, flags: int = 0) -> re.Pattern[str] | BoundaryLine:
        if flags == 0 and pattern.startswith(_BOUNDARY_OPENS) and pattern.endswith(_BOUNDARY_CLOSES):
            escaped = pattern[len(_BOUNDARY_OPENS) : -len(_BOUNDARY_CLOSES)]
            return BoundaryLine(_ESCAPED.sub(r"\1", escaped))
        return re.compile(pattern, flags)


email.feedparser.re = FeedparserPatterns()  # type: ignore[attr-defined]  # not in the stubs


# RFC 5322 2.3: CR and LF only as CRLF. Python's parser splits lines at a lone CR too; the
# signature's canonical form and other readers do not.
_BARE_CR = re.compile(rb"\r(?!\n)")


def has_bare_cr(data: bytes) -> bool:
    """Whether ``data`` holds a CR that does not start a CRLF line end."""
    return _BARE_CR.search(data) is not None


def decoded_payload(part: Message) -> bytes:
    """The body of a leaf part with its transfer encoding undone (``b""`` when it has none).

    A base64 body is decoded with pybase64 when it is well-formed base64 (what
    ``Message.get_payload`` tries first too); otherwise by the email package, which notes
    each defect it finds on ``part``.
    """
    if str(part.get("Content-Transfer-Encoding", "")).lower() == "base64" and not part.is_multipart():
        decoded = _strict_base64(part.get_payload())
        if decoded is not None:
            return decoded
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _strict_base64(text: object) -> bytes | None:
    """``text`` decoded when it is base64 in lines, padded, of the alphabet alone; else None."""
    if not isinstance(text, str) or not text.isascii():
        return None
    encoded = text.encode("ascii").translate(None, b"\r\n")  # the line ends, and only them
    if len(encoded) % 4:
        return None
    try:
        return pybase64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error
        return None


def base64_lines(data: bytes) -> bytes:
    """``data`` in base64 as a MIME body: lines of 76 characters, each ending in CRLF
    (RFC 2045 6.8), as ``base64.encodebytes`` writes them with CRLF. pybase64 encodes with
    the processor's vector instructions, some twenty times the speed of ``binascii``."""
    return pybase64.encodebytes(data).replace(b"\n", b"\r\n")


def subparts(part: Message) -> list[Message]:
    """The parts inside a multipart or ``message/*`` part (none for a leaf part)."""
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def parts_with_depth(message: Message) -> Iterator[tuple[Message, int]]:
    """Every part of ``message`` with its depth (the message itself at 1), depth first and
    without recursion: a consumer that stops at a depth or a count reads no further."""
    stack = [(message, 1)]
    while stack:
        part, depth = stack.pop()
        yield part, depth
        stack.extend((child, depth + 1) for child in subparts(part))


# How deep MIME parts may nest, and how many a message may have: a submission is refused
# past them (``mss.pipeline``), and every later walk of a message's tree stays short.
MAX_MIME_DEPTH = 32
MAX_MIME_PARTS = 256
# A part that holds others says so with one of these words in a field, or is a part of a
# multipart/digest, whose parts are message/rfc822 without saying so: each word opens at
# most two levels.
_NESTING = re.compile(rb"(?i)multipart|message/")


def nests_deeper_than(entity: bytes, limit: int = MAX_MIME_DEPTH) -> bool:
    """Whether the MIME parts of ``entity`` nest more than ``limit`` levels deep. An entity
    with too few of the words that open levels to reach that depth (the usual case) is not
    parsed at all."""
    found = 0
    for _ in _NESTING.finditer(entity):
        found += 1
        if 2 * found + 1 > limit:  # two levels a word at most, and the leaf
            break
    else:
        return False
    try:
        message = parse_bytes(entity, email.policy.compat32)
    except RecursionError:
        return True
    return any(depth > limit for _part, depth in parts_with_depth(message))


# -- parsing -----------------------------------------------------------------------------
#
# The email package's parser reads a message line by line in Python: about 25 ms for a 1 MB
# attachment, most of a message's cost. Every line of a base64 body is a line of the base64
# alphabet alone: no "-" (it cannot be a boundary delimiter), no ":" and no leading blank (it
# cannot be a header field or its continuation), not empty (it cannot end a header section).
# In every state of the parser such a line does one of two things, the same for each line
# of a run: it is added to the lines of a body, a preamble or an epilogue, or, where header
# fields were expected, it ends them and is the first such line. So a run of them can be
# handed to the parser as one line, a mark, and put back in place of the mark afterwards:
# the parser builds the same tree, whose bodies are then the same text. The run's last line
# is kept as it is, so that no mark ends a part (the parser removes the line end before a
# boundary). Whatever the parser did with a mark other than keep it once in a body, the
# message is parsed again whole.

_RUN_LINES = 64  # shorter runs are not worth it
# Lines of 40 characters or more (encoders write 76, some 64): every run, whatever its
# length, in one linear pass, its lines counted after. Counting them in the pattern itself
# ("{64,}") tries again from each line of a shorter run: on 1 MB of 63-line runs, 90 ms,
# ten times what the parser itself takes (bench/bench_mime.py has such messages).
_LINES = re.compile(rb"(?:^[A-Za-z0-9+/=]{40,}+\r?\n)++", re.MULTILINE)


def parse_bytes(raw: bytes, policy: Policy) -> Message:
    """``raw`` parsed by the email package with ``policy``: the same message as
    ``BytesParser(policy=policy).parsebytes(raw)``, with long base64 bodies read as a
    whole. Raises what that parser raises."""
    message = parse_hollowed(raw, policy)
    return message if message is not None else BytesParser(policy=policy).parsebytes(raw)


def parse_hollowed(raw: bytes, policy: Policy) -> Message | None:
    """``raw`` parsed with its runs of base64 lines handed over as marks and put back; None
    when it has no such run or a mark was not found where it belongs."""
    runs = _runs(raw)
    token = _mark_token(raw) if runs else None
    if token is None:
        return None
    pieces: list[bytes] = []
    kept: dict[str, str] = {}
    last = 0
    for number, (start, end) in enumerate(runs):
        mark = b"%s%06d\r\n" % (token, number)
        pieces += [raw[last:start], mark]
        # Decoded from a view: a copy of the run as bytes first would be one more block as
        # large as the run (and its pages faulted in afresh).
        kept[mark.decode("ascii")] = str(memoryview(raw)[start:end], "ascii")
        last = end
    pieces.append(raw[last:])
    message = BytesParser(policy=policy).parsebytes(b"".join(pieces))
    return message if _put_back(message, token.decode("ascii"), kept) else None


def _runs(raw: bytes) -> list[tuple[int, int]]:
    """Where each run of more than ``_RUN_LINES`` base64 lines starts, and where its last
    line starts (that line is left to the parser)."""
    runs = []
    for match in _LINES.finditer(raw):
        start, end = match.span()
        if raw.count(b"\n", start, end) > _RUN_LINES:
            runs.append((start, raw.rindex(b"\n", start, end - 1) + 1))
    return runs


def _mark_token(raw: bytes) -> bytes | None:
    """A line prefix of the base64 alphabet found nowhere in ``raw``."""
    for _attempt in range(4):
        token = b"MSSRUN" + secrets.token_hex(10).upper().encode("ascii")
        if token not in raw:
            return token
    return None


def _put_back(message: Message, token: str, kept: dict[str, str]) -> bool:
    """Each mark of ``kept`` replaced by its lines in the body, preamble or epilogue that
    holds it; False unless every mark was found exactly once, and there only."""
    found: list[str] = []
    for part in message.walk():
        if any(token in str(value) for _name, value in part.raw_items()):
            return False
        # The parser's own text: get_payload() would decode a body holding non-ASCII bytes.
        payload = vars(part).get("_payload")
        if isinstance(payload, str) and token in payload:
            part.set_payload(_restore(payload, token, kept, found))  # no charset: kept as given
        for name in ("preamble", "epilogue"):
            text = getattr(part, name)
            if isinstance(text, str) and token in text:
                setattr(part, name, _restore(text, token, kept, found))
    return sorted(found) == sorted(kept)


def _restore(text: str, token: str, kept: dict[str, str], found: list[str]) -> str:
    """``text`` with its marks replaced by their lines; each mark added to ``found``."""
    pieces = text.split(token)
    restored = [pieces[0]]
    for piece in pieces[1:]:
        mark = token + piece[:8]  # six digits and CRLF
        found.append(mark)
        if mark not in kept:
            return text  # not a mark made here: ``found`` can no longer match
        restored += [kept[mark], piece[8:]]  # joined once: no run is copied twice
    return "".join(restored)
