"""Languages of the web inbox: French by default, English on request.

Strings live in gettext catalogues (``translations/<lang>/LC_MESSAGES/messages.po``, msgids
in English). They are compiled in memory when the app starts (Babel's ``write_mo``), so a
checkout runs without a build step and the running catalogue is always the committed one.
The language is the ``mss-lang`` cookie when set by the switch, else the best match of
``Accept-Language``, else French. Each language has its own Jinja environment with the
gettext callables installed, so one request never sees another's language.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from mss.mailbox.items import DISPLAY_TZ

LANGUAGES = ("fr", "en")
DEFAULT = "fr"
COOKIE = "mss-lang"
HERE = Path(__file__).resolve().parent
TRANSLATIONS = HERE / "translations"
TEMPLATES = HERE / "templates"


def load_translations(language: str) -> Translations:
    """The catalogue of ``language``, compiled from its ``.po`` file."""
    path = TRANSLATIONS / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(buffer)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language to answer in: the cookie's, else Accept-Language's best, else French."""
    if cookie in LANGUAGES:
        return cookie
    best: tuple[float, int, str] | None = None
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _sep, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _eq, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        candidate = (-quality, position, primary)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else DEFAULT


@dataclass(frozen=True)
class Language:
    """One language: its catalogue and its template environment."""

    code: str
    translations: Translations
    env: Environment

    def gettext(self, message: str, **values: object) -> str:
        """``message`` translated, with ``%(name)s`` values filled in."""
        text = self.translations.gettext(message)
        return text % values if values else text

    def ngettext(self, singular: str, plural: str, n: int, **values: object) -> str:
        """The singular or plural form for ``n``, translated, ``%(num)d`` filled in."""
        text = self.translations.ngettext(singular, plural, n)
        return text % {"num": n, **values}


def _formatters(code: str) -> dict[str, object]:
    locale = Locale.parse(code)

    def when(value: datetime | None, form: str = "short") -> str:
        """A time in the display zone: ``short`` (date and time), ``day`` or ``list`` (time today, else date)."""
        if value is None:
            return ""
        local = value.astimezone(DISPLAY_TZ)
        if form == "day":
            return format_date(local.date(), format="medium", locale=locale)
        if form == "list":
            today = datetime.now(DISPLAY_TZ).date()
            if local.date() == today:
                return format_datetime(local, "HH:mm", locale=locale)
            return format_date(local.date(), format="short" if local.year != today.year else "d MMM", locale=locale)
        return format_datetime(local, format="medium", tzinfo=DISPLAY_TZ, locale=locale)

    def day(value: date | None) -> str:
        """A date as ISO text (form fields)."""
        return value.isoformat() if value else ""

    def size(value: int) -> str:
        """A size in bytes for people."""
        units = ("o", "ko", "Mo") if code == "fr" else ("B", "kB", "MB")
        if value < 1000:
            return f"{value} {units[0]}"
        if value < 1_000_000:
            return f"{value / 1000:.0f} {units[1]}"
        return f"{value / 1_000_000:.1f} {units[2]}"

    return {"when": when, "isodate": day, "size": size}


def _environment(code: str, translations: Translations) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # added to the Environment by the i18n extension at run time
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
    env.filters.update(_formatters(code))
    env.globals["lang"] = code
    return env


def load_languages() -> dict[str, Language]:
    """Every language with its catalogue and environment (done once per app)."""
    found = {}
    for code in LANGUAGES:
        translations = load_translations(code)
        found[code] = Language(code=code, translations=translations, env=_environment(code, translations))
    return found
