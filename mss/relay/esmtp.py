"""ESMTP parameters of MAIL FROM and RCPT TO, parsed strictly (RFC 5321, 1870, 3461, 4954).

aiosmtpd refuses every RCPT parameter and upper-cases parameter values, which would break
DSN (RFC 3461 ``ENVID`` and ``ORCPT`` are case-sensitive xtext). The relay therefore parses
the text after the address itself, with this module; the RFC 3461 values are read by
``mss.receipts.parse_notify``. A syntax error is a ``501``, a parameter we do not
implement a ``555`` (RFC 5321 section 4.1.1.11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from mss.errors import DsnParameterError, ParameterRefused
from mss.receipts import Notify, NotifySpec, parse_notify
from mss.relay import replies

# RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"),
# esmtp-value = 1*(%d33-60 / %d62-126).
_KEYWORD = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"\A[\x21-\x3c\x3e-\x7e]+\Z")
# RFC 3461 4: xtext = *( xchar / hexchar ), hexchar = "+" 2(%x30-39 / %x41-46).
_XTEXT = re.compile(r"\A(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")

_PRINTABLE = re.compile(r"\A[\x20-\x7e]*\Z")

MAX_SIZE_DIGITS: Final = 20
DSN_KEYWORDS: Final = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


@dataclass(frozen=True)
class MailParameters:
    """What the client asked for with MAIL FROM."""

    size: int | None = None  # RFC 1870 declared size
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    envelope_id: str | None = None  # RFC 3461 ENVID, decoded


@dataclass(frozen=True)
class RcptParameters:
    """What the client asked for with RCPT TO (RFC 3461)."""

    notify: Notify | None = None  # None: not given, the pipeline's default applies
    orcpt: str | None = None  # "rfc822;address", the xtext decoded


def _split(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for token in text.split():
        keyword, eq, value = token.partition("=")
        if not _KEYWORD.match(keyword) or (eq and not _VALUE.match(value)):
            raise ParameterRefused(replies.PARAMETER_SYNTAX)
        keyword = keyword.upper()
        if keyword in params:
            raise ParameterRefused(replies.PARAMETER_SYNTAX)
        params[keyword] = value if eq else None
    return params


def _dsn(params: dict[str, str | None], command: Literal["MAIL", "RCPT"]) -> NotifySpec:
    try:
        spec = parse_notify({k: v for k, v in params.items() if k in DSN_KEYWORDS}, command=command)
    except DsnParameterError as exc:
        raise ParameterRefused(replies.PARAMETER_SYNTAX) from exc
    # ENVID and ORCPT end up in receipt header fields: whatever the decoder lets through, a
    # control character (an xtext "+0A") must never reach them.
    for value in (spec.envid, None if spec.orcpt is None else str(spec.orcpt)):
        if value is not None and not _PRINTABLE.match(value):
            raise ParameterRefused(replies.PARAMETER_SYNTAX)
    return spec


def parse_mail(text: str, *, size_limit: int | None) -> MailParameters:
    """The parameters after ``MAIL FROM:<address>``.

    Raises ParameterRefused: 501 on bad syntax, 555 on an unknown parameter, 552 when the
    declared SIZE is over ``size_limit``.
    """
    params = _split(text)
    size: int | None = None
    for keyword, value in params.items():
        if keyword == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > MAX_SIZE_DIGITS:
                raise ParameterRefused(replies.PARAMETER_SYNTAX)
            size = int(value)
            if size_limit and size > size_limit:
                raise ParameterRefused(replies.MESSAGE_TOO_LARGE)
        elif keyword == "BODY":
            # 8BITMIME is advertised; BINARYMIME (RFC 3030) is not.
            if value is None or value.upper() not in {"7BIT", "8BITMIME"}:
                raise ParameterRefused(replies.PARAMETER_SYNTAX)
        elif keyword == "AUTH":
            # RFC 4954 5: the AUTH parameter is accepted; the sender is the account we
            # authenticated, whatever the client claims here.
            if value is None or (value != "<>" and not _XTEXT.match(value)):
                raise ParameterRefused(replies.PARAMETER_SYNTAX)
        elif keyword not in DSN_KEYWORDS:
            raise ParameterRefused(replies.PARAMETER_NOT_RECOGNIZED)
    dsn = _dsn(params, "MAIL")
    return MailParameters(size=size, ret=dsn.ret, envelope_id=dsn.envid)


def parse_rcpt(text: str) -> RcptParameters:
    """The parameters after ``RCPT TO:<address>``. Raises ParameterRefused (501, 555)."""
    params = _split(text)
    for keyword in params:
        if keyword not in DSN_KEYWORDS:
            raise ParameterRefused(replies.PARAMETER_NOT_RECOGNIZED)
    dsn = _dsn(params, "RCPT")
    notify = dsn.notify if dsn.notify_given else None
    return RcptParameters(notify=notify, orcpt=None if dsn.orcpt is None else str(dsn.orcpt))
