"""The webhook for integrators: each final status of a recipient of a sent message
(``delivered``, ``processed``, ``failed``), POSTed to ``MSS_WEBHOOK_URL`` with a Standard
Webhooks signature, durably and at least once.

``outbox`` records events in the transaction that records the status, and owns their
leases and outcomes; ``signing`` computes the signature (pure); ``sender`` is the loop
inside ``mss serve`` that POSTs them with retries.
"""

from mss.webhooks.outbox import EVENT_TYPE, FINAL, record_final
from mss.webhooks.signing import headers, signature

__all__ = ["EVENT_TYPE", "FINAL", "headers", "record_final", "signature"]
