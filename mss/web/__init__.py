"""The web inbox and its JSON API (Litestar, server-rendered Jinja pages, no build step).

``create_app(rt)`` builds the app; ``serve_web(rt)`` serves it over HTTPS until cancelled.
Controllers (``auth``, ``pages``, ``compose_pages``, ``account``, ``api``) translate HTTP to
the mailbox service (``mss.mailbox``) and the accounts service; ``sessions`` keeps logins
server-side; ``security`` adds headers and CSRF checks; ``i18n`` holds the languages.
"""

from mss.web.app import create_app
from mss.web.server import serve_web

__all__ = ["create_app", "serve_web"]
