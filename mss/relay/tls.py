"""The relay's TLS server context: which protocol versions and cipher suites STARTTLS accepts.

TLS 1.2 and 1.3 only. TLS 1.3 suites are all AEAD with ephemeral key exchange by design;
for TLS 1.2 the suites are limited to ECDHE (forward secrecy) with AES-GCM or
ChaCha20-Poly1305 (AEAD), as RFC 9325 section 4.2 recommends. The certificate and key are
``server.pem`` / ``server.key`` in ``MSS_CERTS_DIR`` (``mss pki init`` makes them).
"""

from __future__ import annotations

import ssl
from typing import Final

from mss.crypto.pki import PkiPaths
from mss.errors import ConfigError
from mss.settings import Settings

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2
MAXIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_3
# OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are configured apart and are all AEAD).
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def server_context(settings: Settings) -> ssl.SSLContext:
    """An SSLContext for STARTTLS with the operator's TLS certificate.

    Raises ConfigError when the certificate or key is missing or unusable.
    """
    paths = PkiPaths.from_settings(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.maximum_version = MAXIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    # No TLS compression (CRIME), no renegotiation, our suite order, a fresh ECDH key each time.
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    )
    # Submission clients authenticate with AUTH, not with certificates.
    context.verify_mode = ssl.CERT_NONE
    for path in (paths.tls_certificate, paths.tls_key):
        if not path.is_file():
            raise ConfigError(f"{path} is missing: run `mss pki init` or install the operator's TLS certificate")
    try:
        context.load_cert_chain(paths.tls_certificate, paths.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"the TLS certificate {paths.tls_certificate} or its key cannot be loaded") from exc
    return context


def mx_server_context(settings: Settings) -> ssl.SSLContext:
    """An SSLContext for STARTTLS on the MX port: the same certificate and suites, and a
    client certificate asked for and checked against ``MSS_PEER_CA_FILE``.

    A peer presenting a certificate of another CA fails the handshake (TLS alert
    ``unknown_ca``); one presenting none completes it and is refused at ``MAIL`` (530).
    Raises ConfigError when the certificate, its key or the peer CA file is unusable.
    """
    context = server_context(settings)
    ca_file = settings.federation.peer_ca_file
    if not ca_file.is_file():
        raise ConfigError(f"MSS_PEER_CA_FILE {ca_file} is missing: name the CAs of the other operators")
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"MSS_PEER_CA_FILE {ca_file} holds no usable CA certificate") from exc
    context.verify_mode = ssl.CERT_OPTIONAL
    return context
