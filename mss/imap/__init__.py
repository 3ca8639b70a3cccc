"""The IMAP door (RFC 3501) for mail clients, over the mailbox services (DESIGN.md "Parts").

- ``replies``: our reply texts with their RFC 5530 codes;
- ``backend``: pymap's session interface answered by ``mss.mailbox.sync`` and
  ``mss.mailbox.served`` (UIDs, flags, moves, what a client receives);
- ``server``: the STARTTLS and implicit TLS listeners, logins through ``mss.accounts``,
  standing re-checked before every command, limits and timeouts; ``serve_imap`` for a
  process, ``ImapServer`` for tests and benchmarks;
- ``workers``: the envelopes of the bodies served opened in worker processes.

pymap (an asyncio IMAP server library) parses the protocol and writes responses; nothing of
mss's rules lives in it or here.

The package imports none of them: a worker process that opens envelopes imports
``workers`` alone, not the whole door.
"""
