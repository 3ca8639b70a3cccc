"""The SMTP submission relay: STARTTLS, AUTH, then the pipeline (DESIGN.md "Parts").

- ``replies``: every reply, named, with its RFC 3463 enhanced status code;
- ``tls``: the STARTTLS server context (TLS 1.2/1.3, forward-secret AEAD suites);
- ``esmtp``: MAIL and RCPT parameters (SIZE, BODY, RET, ENVID, NOTIFY, ORCPT);
- ``auth``: AUTH PLAIN and LOGIN against ``mss.accounts``, off the event loop;
- ``protocol``: the aiosmtpd SMTP session with our limits (size, lines, headers, timeout);
- ``handler``: the calls into ``mss.pipeline`` and the reply for each verdict;
- ``server``: ``serve_relay`` for a relay process, ``RelayServer`` for tests;
- ``replicas``: the other processes of the submission port (``MSS_SMTP_PROCESSES``);
- ``mx``: the MX door for other operators (mutual TLS, no AUTH), over ``mss.inbound``.
"""

from mss.relay.server import RelayServer, run_relay, serve_relay, start_listener

__all__ = ["RelayServer", "run_relay", "serve_relay", "start_listener"]
