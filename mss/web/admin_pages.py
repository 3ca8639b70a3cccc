"""The administrators' activity pages under ``/admin``: figures, SVG charts, a CSV download.

Only an account with the administrator role (``mss account admin ADDRESS``) opens them;
anybody else gets the 403 page. Each view is an ``admin.view`` audit event. The figures are
``mss.dashboard``'s: counts and metadata, never message content.
"""

from __future__ import annotations

import csv
import io

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import PermissionDeniedException

from mss import accounts, audit, dashboard
from mss.db import session_scope
from mss.runtime import Runtime
from mss.web.auth import active_session
from mss.web.context import Rt, language, render, request_id, run
from mss.web.messages import _
from mss.web.sessions import Live

DAYS = 30


def _figures(rt: Runtime, address: str, view: str, rid: str) -> dashboard.Activity:
    """The figures for an administrator, with the view on record. Raises PermissionDeniedException."""
    with session_scope(rt.engine) as session:
        allowed = accounts.is_admin(session, address)
        audit.record(
            session,
            actor=address,
            action="admin.view",
            object=view,
            outcome=audit.SUCCESS if allowed else audit.DENIED,
            request_id=rid,
        )
        figures = dashboard.activity(session, rt.settings, rt.master_key, days=DAYS) if allowed else None
    if figures is None:  # the refusal is on record (committed) before it is answered
        raise PermissionDeniedException("administrators only")
    return figures


class AdminController(Controller):
    """Activity figures for administrators."""

    path = "/admin"
    include_in_schema = False
    dependencies = {"live": Provide(active_session)}

    @get("/")
    async def activity(self, request: Request, live: Live, rt: Rt) -> Response:
        """The activity page."""
        figures = await run(_figures, rt, live.address, "activity", request_id(request))
        t = language(request).gettext
        rows = dashboard.csv_rows(figures)
        return render(
            request,
            "admin.html",
            user=live.address,
            figures=figures,
            days=DAYS,
            header=rows[0],
            rows=rows[1:],
            door_chart=dashboard.bar_chart(t(_("Messages per day by door")), figures.days, dashboard.DOORS, "by_door"),
            kind_chart=dashboard.bar_chart(
                t(_("Messages per day by document kind")), figures.days, dashboard.KINDS, "by_kind"
            ),
        )

    @get("/activity.csv")
    async def activity_csv(self, request: Request, live: Live, rt: Rt) -> Response:
        """The per-day table as CSV."""
        figures = await run(_figures, rt, live.address, "activity.csv", request_id(request))
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(dashboard.csv_rows(figures))
        return Response(
            content=out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="activity.csv"'},
        )
