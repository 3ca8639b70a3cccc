"""Mail for other operators: the durable queue and its delivery (DESIGN.md "Parts").

- ``queue``: entries committed with the message they belong to, leases, administration;
- ``routes``: the host for a domain (its route, or its DNS MX in production);
- ``client``: one SMTP attempt over mutual TLS (aiosmtplib);
- ``notices``: DSNs to local senders and receipts queued for remote senders;
- ``worker``: the delivery loop inside ``mss serve``, retries, delays, expiry, bounces.

Nothing is imported here: the pipeline needs ``queue`` alone, and ``worker`` (which needs
the relay's TLS settings) sits above the relay.
"""
