"""What only the browser needs of the second factor: the enrolment QR code and the secret
written for typing by hand. Codes, enrolment and recovery codes are ``mss.accounts``'s.
"""

from __future__ import annotations

import re

import segno
from markupsafe import Markup


def qr_svg(uri: str, title: str) -> Markup:
    """The QR code of ``uri`` as inline SVG (presentation attributes only, no style or script)."""
    code = segno.make(uri, error="m")
    return Markup(code.svg_inline(scale=5, border=4, dark="#000", light="#fff", title=title, omitsize=False))


def secret_of(uri: str) -> str:
    """The base32 secret of an otpauth URI, grouped by four for typing by hand."""
    found = re.search(r"[?&]secret=([A-Z2-7]+)", uri)
    secret = found.group(1) if found else ""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
