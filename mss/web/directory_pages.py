"""The directory as professionals browse it: search as you type (name, RPPS, profession,
organisation, town), and an entry's card with its organisation, postal address, other
mailboxes and certificate, and a "write to" link. Behind the login, like the rest of the
directory; the JSON behind the search fields is ``/directory.json`` (compose_pages)."""

from __future__ import annotations

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from directory.publication import EntryCard, entry_card
from directory.search import SearchPage, search
from mss.db import session_scope
from mss.errors import DirectoryError
from mss.runtime import Runtime
from mss.web.auth import active_session
from mss.web.context import Rt, language, render, run
from mss.web.sessions import Live

PER_PAGE = 20
MAX_QUERY = 100


def _search(rt: Runtime, query: str, page: int) -> SearchPage:
    with session_scope(rt.engine, readonly=True) as session:
        return search(session, query, page=page, per_page=PER_PAGE, with_total=True)


def _card(rt: Runtime, address: str) -> EntryCard:
    with session_scope(rt.engine, readonly=True) as session:
        return entry_card(session, address)


def _page_number(value: str | None) -> int:
    return int(value) if value and value.isascii() and value.isdigit() and 0 < int(value) <= 10_000 else 1


class DirectoryController(Controller):
    """The directory's search page and an entry's card."""

    include_in_schema = False
    path = "/directory"
    dependencies = {"live": Provide(active_session)}

    @get("/")
    async def browse(self, request: Request, live: Live, rt: Rt) -> Response:
        """Search the directory; the results, with links to each card and to write."""
        query = (request.query_params.get("q") or "").strip()
        page = _page_number(request.query_params.get("page"))
        result, error = None, None
        if len(query) > MAX_QUERY:
            error = language(request).gettext("A search is limited to %(count)s characters.", count=MAX_QUERY)
        elif query:
            try:
                result = await run(_search, rt, query, page)
            except DirectoryError:
                error = language(request).gettext("This search cannot be done; try fewer words.")
        return render(
            request,
            "directory.html",
            status_code=422 if error else 200,
            user=live.address,
            query=query,
            result=result,
            error=error,
        )

    @get("/{address:str}")
    async def entry(self, request: Request, live: Live, rt: Rt, address: FromPath[str]) -> Response:
        """An entry's card: organisation, postal address, mailboxes, certificate, write to."""
        if len(address) > 254 or not address.isprintable():
            raise NotFoundException()
        try:
            card = await run(_card, rt, address)
        except DirectoryError as exc:
            raise NotFoundException() from exc
        return render(request, "directory_entry.html", user=live.address, card=card, e=card.entry)
