"""Key custody: password hashes, password-wrapped private keys, recovery escrow, PKCS#12.

An account's S/MIME private key never rests in clear. It is kept twice:

- wrapped under a key derived from the account password (argon2id, then NaCl SecretBox:
  XSalsa20-Poly1305, so a wrong password and a tampered blob are both detected);
- sealed to the operator's offline recovery X25519 public key (NaCl SealedBox), so an
  administrator holding the recovery private key can restore access after a lost password.

Recovery key files hold the raw 32-byte X25519 key as one line of standard base64 text
(``recovery.pub``, ``recovery.key``), so they can be copied, printed or pasted offline.

Passwords are normalised to Unicode NFKC before use (NIST SP 800-63B 5.1.1.2), so the same
password typed on two systems that compose accents differently opens the same key.

Each argon2id computation holds its memory cost (64 MiB by default) while it runs. A login
makes one: opening the wrapped key is the password's check (``mss.accounts._common.open_keys``,
for a login, a password change and a rekey alike; a closed mailbox, whose keys are erased,
is checked against the password's hash). However many logins
arrive at once, from any door, at most as many computations run together as the process has
cores (``ARGON2_AT_ONCE``); the others wait their turn. More at once would finish no sooner,
the work being CPU-bound, and would hold that memory each: sixteen mail clients logging in
together took the relay's processes from about 190 MiB to between 380 MiB and 1 GiB
(``bench/bench_logins.py``).
"""

from __future__ import annotations

import base64
import binascii
import stat
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.public
import nacl.pwhash
import nacl.pwhash.argon2id
import nacl.secret
import nacl.utils
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import Certificate

from mss import cores
from mss.crypto import gnupg22
from mss.errors import ConfigError, CryptoError, KeyUnwrapError
from mss.files import write_file

RECOVERY_KEY_SIZE = nacl.public.PrivateKey.SIZE  # 32 bytes, X25519
# A recovery key file is a line of base64 with a comment or two: anything longer is not one.
RECOVERY_FILE_LIMIT = 4096
SALT_SIZE = nacl.pwhash.argon2id.SALTBYTES  # 16 bytes
# PKCS#12 PBKDF2 rounds: above OpenSSL 3's default (2048), cheap next to a human typing it.
PKCS12_KDF_ROUNDS = 200_000
# PKCS#12 profiles (see export_pkcs12): what each was checked to import into.
PKCS12_STRONG = "strong"
PKCS12_COMPATIBLE = "compatible"
PKCS12_PROFILES = (PKCS12_STRONG, PKCS12_COMPATIBLE)
# GnuPG 2.2's PKCS#12 reader (minip12.c) refuses passwords longer than this, in bytes; it
# tries the UTF-8 bytes first, then Latin-1 and other single-byte character sets.
PKCS12_COMPATIBLE_MAX_PASSWORD = 31
# How many times a compatible export is made again with new salts (mss.crypto.gnupg22);
# about one file in 60 is refused, so running out means something else is wrong.
PKCS12_COMPATIBLE_ATTEMPTS = 16
_ARGON2ID_PREFIX = "$argon2id$"
# argon2id computations that run at once in this process (see the module's docstring).
ARGON2_AT_ONCE = cores.usable()
_argon2_turns = threading.BoundedSemaphore(ARGON2_AT_ONCE)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class WrappedKey:
    """A private key sealed under argon2id(password, salt): what the account row stores."""

    salt: bytes
    ciphertext: bytes  # SecretBox output: nonce + ciphertext + tag
    opslimit: int
    memlimit: int
    # The account's earlier keys, packed (pack_keys), under the same derived key: one
    # argon2id derivation opens them all. Empty when there is none.
    past_ciphertext: bytes = b""


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str):
        raise CryptoError("a password must be text")
    if not password:
        raise CryptoError("a password must not be empty")
    # Text with lone surrogates (bytes a client sent that are not UTF-8, which the IMAP door
    # reads with surrogateescape) is no password the policy lets be set: it is encoded all
    # the same (surrogatepass), and costs the same argon2id work as any wrong password.
    encoded = unicodedata.normalize("NFKC", password).encode("utf-8", "surrogatepass")
    if len(encoded) > nacl.pwhash.argon2id.PASSWD_MAX:
        raise CryptoError("the password is too long")
    return encoded


def _check_cost(opslimit: int, memlimit: int) -> None:
    if not nacl.pwhash.argon2id.OPSLIMIT_MIN <= opslimit <= nacl.pwhash.argon2id.OPSLIMIT_MAX:
        raise CryptoError(f"argon2id opslimit {opslimit} is out of range")
    if not nacl.pwhash.argon2id.MEMLIMIT_MIN <= memlimit <= nacl.pwhash.argon2id.MEMLIMIT_MAX:
        raise CryptoError(f"argon2id memlimit {memlimit} is out of range")


# -- password hashes ---------------------------------------------------------------------


def hash_password(password: str, *, opslimit: int, memlimit: int) -> str:
    """The argon2id hash of ``password`` in libsodium's encoded form (``$argon2id$v=19$...``).

    Raises CryptoError for an empty password or an out-of-range cost.
    """
    _check_cost(opslimit, memlimit)
    secret = _password_bytes(password)
    with _argon2_turns:
        encoded = nacl.pwhash.argon2id.str(secret, opslimit=opslimit, memlimit=memlimit)
    return encoded.decode("ascii")


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a wrong or empty password.

    Raises CryptoError only when the stored hash is not an argon2id hash at all (a corrupt
    record is not the same thing as a wrong password).
    """
    if not isinstance(password_hash, str) or not password_hash.startswith(_ARGON2ID_PREFIX):
        raise CryptoError("the stored password hash is not an argon2id hash")
    try:
        secret = _password_bytes(password)
    except CryptoError:
        return False
    try:
        with _argon2_turns:
            return nacl.pwhash.argon2id.verify(password_hash.encode("ascii"), secret)
    except nacl.exceptions.InvalidkeyError:
        return False
    except (UnicodeEncodeError, nacl.exceptions.CryptoError) as exc:
        raise CryptoError("the stored password hash cannot be read") from exc


def password_hash_needs_update(password_hash: str, *, opslimit: int, memlimit: int) -> bool:
    """True when the hash was made with other argon2id costs than the ones given."""
    if not password_hash.startswith(_ARGON2ID_PREFIX):
        return True
    try:
        params = dict(item.split("=", 1) for item in password_hash.split("$")[3].split(","))
        return int(params["t"]) != opslimit or int(params["m"]) * 1024 != memlimit
    except (IndexError, KeyError, ValueError):
        return True


# -- password-wrapped private keys -------------------------------------------------------


def _derive(password: str, salt: bytes, opslimit: int, memlimit: int) -> nacl.secret.SecretBox:
    _check_cost(opslimit, memlimit)
    if len(salt) != SALT_SIZE:
        raise KeyUnwrapError(f"the key salt must be {SALT_SIZE} bytes")
    secret = _password_bytes(password)
    with _argon2_turns:
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, secret, salt, opslimit=opslimit, memlimit=memlimit
        )
    return nacl.secret.SecretBox(key)


def pack_keys(keys_der: Sequence[bytes]) -> bytes:
    """Several DER keys as one blob: each preceded by its length (4 bytes, big-endian)."""
    return b"".join(len(der).to_bytes(4, "big") + bytes(der) for der in keys_der)


def unpack_keys(blob: bytes) -> tuple[bytes, ...]:
    """The keys of a :func:`pack_keys` blob. Raises CryptoError when it is malformed."""
    found: list[bytes] = []
    offset = 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise CryptoError("a packed key list is truncated")
        size = int.from_bytes(blob[offset : offset + 4], "big")
        offset += 4
        if size == 0 or offset + size > len(blob):
            raise CryptoError("a packed key list is truncated")
        found.append(bytes(blob[offset : offset + size]))
        offset += size
    return tuple(found)


def wrap_private_key(
    key_der: bytes, password: str, *, opslimit: int, memlimit: int, past: Sequence[bytes] = ()
) -> WrappedKey:
    """Seal ``key_der`` (and the account's ``past`` keys) under argon2id(password, fresh
    salt) with SecretBox.

    Raises CryptoError for an empty key or password, or an out-of-range cost.
    """
    if not key_der:
        raise CryptoError("there is no key to wrap")
    salt = nacl.utils.random(SALT_SIZE)
    box = _derive(password, salt, opslimit, memlimit)
    return WrappedKey(
        salt=salt,
        ciphertext=bytes(box.encrypt(bytes(key_der))),
        opslimit=opslimit,
        memlimit=memlimit,
        past_ciphertext=bytes(box.encrypt(pack_keys(past))) if past else b"",
    )


def unwrap_private_keys(wrapped: WrappedKey, password: str) -> tuple[bytes, tuple[bytes, ...]]:
    """The current key and the earlier ones sealed in ``wrapped``.

    Raises KeyUnwrapError for a wrong password, a tampered blob or a malformed record.
    """
    try:
        box = _derive(password, wrapped.salt, wrapped.opslimit, wrapped.memlimit)
    except KeyUnwrapError:
        raise
    except CryptoError as exc:
        raise KeyUnwrapError(f"the wrapped key cannot be opened: {exc.message}") from exc
    try:
        current = box.decrypt(wrapped.ciphertext)
        past = unpack_keys(box.decrypt(wrapped.past_ciphertext)) if wrapped.past_ciphertext else ()
    except (nacl.exceptions.CryptoError, TypeError, CryptoError) as exc:
        raise KeyUnwrapError("the wrapped key cannot be opened (wrong password or altered data)") from exc
    return current, past


def unwrap_private_key(wrapped: WrappedKey, password: str) -> bytes:
    """The current key bytes sealed in ``wrapped``.

    Raises KeyUnwrapError for a wrong password, a tampered blob or a malformed record.
    """
    return unwrap_private_keys(wrapped, password)[0]


# -- offline recovery escrow -------------------------------------------------------------


def new_recovery_key_pair() -> tuple[bytes, bytes]:
    """A fresh X25519 pair as raw bytes: (private, public)."""
    private = nacl.public.PrivateKey.generate()
    return bytes(private), bytes(private.public_key)


def generate_recovery_keypair(private_path: Path, public_path: Path) -> bytes:
    """Write a fresh recovery pair as two files (private 0600, public 0644), replacing any
    previous ones; return the raw public key.

    The private file is meant to leave the server for offline storage once written.
    """
    private, public = new_recovery_key_pair()
    write_recovery_key(Path(private_path), private, private=True)
    write_recovery_key(Path(public_path), public, private=False)
    return public


def encode_recovery_key(raw: bytes) -> bytes:
    """The file form of a recovery key: one line of base64 text."""
    if len(raw) != RECOVERY_KEY_SIZE:
        raise CryptoError(f"a recovery key is {RECOVERY_KEY_SIZE} bytes")
    return base64.b64encode(raw) + b"\n"


def decode_recovery_key(text: bytes) -> bytes:
    """The raw 32 bytes from the file form; raises CryptoError when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("a recovery key file holds one line of base64 text") from exc
    if len(raw) != RECOVERY_KEY_SIZE:
        raise CryptoError(f"a recovery key file holds a {RECOVERY_KEY_SIZE}-byte key in base64")
    return raw


def recovery_public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key that matches a raw recovery private key."""
    if len(private_key) != RECOVERY_KEY_SIZE:
        raise CryptoError(f"a recovery key is {RECOVERY_KEY_SIZE} bytes")
    return bytes(nacl.public.PrivateKey(private_key).public_key)


def load_recovery_public_key(path: Path) -> bytes:
    """The raw recovery public key from ``path`` (MSS_RECOVERY_PUBLIC_KEY).

    Raises ConfigError when the file is missing or is not a base64 X25519 key.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"recovery public key {path} not found (MSS_RECOVERY_PUBLIC_KEY); "
            "run `mss pki init` in development, or install the operator's key"
        ) from None
    except OSError as exc:
        raise ConfigError(f"recovery public key {path} cannot be read: {exc.strerror}") from exc
    try:
        return decode_recovery_key(text)
    except CryptoError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def load_recovery_private_key(path: Path) -> bytes:
    """The raw recovery private key from ``path`` (kept offline, given at restore time).

    Raises CryptoError when the file is missing, readable by group or others, or malformed.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe: `--recovery-key <(gpg -d ...)`
            raise CryptoError(f"recovery private key {path} is not a file or a pipe")
        if mode & 0o077:
            raise CryptoError(f"{path} must not be readable by group or others (chmod 600)")
        with path.open("rb") as handle:
            text = handle.read(RECOVERY_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise CryptoError(f"recovery private key {path} not found") from None
    except OSError as exc:
        raise CryptoError(f"recovery private key {path} cannot be read: {exc.strerror}") from exc
    if len(text) > RECOVERY_FILE_LIMIT:
        raise CryptoError(f"{path} is longer than a recovery key file ({RECOVERY_FILE_LIMIT} bytes at most)")
    try:
        return decode_recovery_key(text)
    except CryptoError as exc:
        raise CryptoError(f"{path}: {exc.message}") from exc


def write_recovery_key(path: Path, raw: bytes, *, private: bool) -> None:
    """Write a recovery key file; a private one is created 0600 (never widened afterwards).

    The file is written next to its final name and renamed into place, so a reader never
    sees half a key and an existing file keeps no stale permissions.
    """
    write_file(Path(path), encode_recovery_key(raw), private=private)


def seal_for_recovery(key_der: bytes, recovery_public_key: bytes) -> bytes:
    """``key_der`` sealed to the recovery public key (X25519 SealedBox, anonymous sender)."""
    if not key_der:
        raise CryptoError("there is no key to seal")
    if len(recovery_public_key) != RECOVERY_KEY_SIZE:
        raise CryptoError(f"a recovery public key is {RECOVERY_KEY_SIZE} bytes")
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(recovery_public_key)).encrypt(bytes(key_der)))


def open_recovery(sealed: bytes, recovery_private_key: bytes) -> bytes:
    """The key bytes sealed by :func:`seal_for_recovery`.

    Raises KeyUnwrapError when the recovery key is not the one it was sealed to, or the
    data was altered.
    """
    if len(recovery_private_key) != RECOVERY_KEY_SIZE:
        raise KeyUnwrapError(f"a recovery private key is {RECOVERY_KEY_SIZE} bytes")
    box = nacl.public.SealedBox(nacl.public.PrivateKey(recovery_private_key))
    try:
        return box.decrypt(bytes(sealed))
    except (nacl.exceptions.CryptoError, TypeError) as exc:
        raise KeyUnwrapError("the escrowed key cannot be opened with this recovery key") from exc


# -- key serialisation -------------------------------------------------------------------


def private_key_to_der(private_key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 DER (only ever handed to :func:`wrap_private_key`)."""
    if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CryptoError("only RSA and EC private keys are supported")
    return private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_der(key_der: bytes, *, authenticated: bool = False) -> PrivateKey:
    """The key object from PKCS#8 DER; raises CryptoError when it is not an RSA or EC key.

    ``authenticated=True`` says the DER just came out of our own authenticated encryption
    (an argon2id-wrapped account key, a master-key-sealed operator key): OpenSSL's RSA
    consistency check, about 130 ms for RSA 3072, then proves nothing and is skipped.
    """
    try:
        key = serialization.load_der_private_key(
            bytes(key_der), password=None, unsafe_skip_rsa_key_validation=authenticated
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError("the private key is not a readable PKCS#8 key") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CryptoError("only RSA and EC private keys are supported")
    return key


def private_key_to_pem(private_key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, for key files written with 0600 permissions."""
    if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CryptoError("only RSA and EC private keys are supported")
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_from_pem(key_pem: bytes) -> PrivateKey:
    """The key object from unencrypted PEM; raises CryptoError when unreadable."""
    try:
        key = serialization.load_pem_private_key(bytes(key_pem), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError("the private key is not a readable PEM key") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CryptoError("only RSA and EC private keys are supported")
    return key


def key_matches_certificate(private_key: PrivateKey, certificate: Certificate) -> bool:
    """True when ``certificate`` carries the public half of ``private_key``."""
    return private_key.public_key() == certificate.public_key()


# -- PKCS#12 export ----------------------------------------------------------------------


def _compatible_password(password: str) -> None:
    try:
        password.encode("latin-1")
    except UnicodeEncodeError:
        raise CryptoError(
            "a compatible PKCS#12 export password must be written in Latin-1 characters (gpgsm 2.2 reads no others)"
        ) from None
    # gpgsm reads a passphrase up to its line's end, and minip12.c up to a NUL.
    if any(ord(character) < 0x20 or 0x7F <= ord(character) < 0xA0 for character in password):
        raise CryptoError("a compatible PKCS#12 export password must not hold control characters")
    # gpgsm 2.2 first tries the password as UTF-8: past 31 bytes it reports "password too
    # long" and exits with an error, even though its Latin-1 attempt then imports the key.
    if len(password.encode("utf-8")) > PKCS12_COMPATIBLE_MAX_PASSWORD:
        raise CryptoError(
            f"a compatible PKCS#12 export password must have at most {PKCS12_COMPATIBLE_MAX_PASSWORD} characters,"
            " each one outside ASCII (é, ß, £...) counting as two (gpgsm 2.2 refuses longer ones)"
        )


def export_pkcs12(
    private_key: PrivateKey,
    certificate: Certificate,
    ca_certificate: Certificate | None,
    password: str,
    *,
    friendly_name: str,
    profile: str = PKCS12_STRONG,
) -> bytes:
    """A PKCS#12 file (key, certificate, CA) a mail client can import.

    ``strong`` (the default): key and certificates encrypted with PBES2 (PBKDF2-HMAC-SHA256,
    AES-256-CBC, RFC 8018), MAC HMAC-SHA-256; OpenSSL 3 and NSS (pk12util, Thunderbird)
    import it. ``compatible``: the PKCS#12 PBE with SHA-1 and 3DES (RFC 7292 appendix C)
    for key and certificates, same MAC and rounds; for gpgsm 2.2 (GnuPG in Debian 12),
    whose reader knows no PBES2 with HMAC-SHA256, and other importers of its age. It limits
    the password to what gpgsm 2.2 reads (Latin-1 characters, no control character, 31 bytes
    of UTF-8) and makes the file again
    with new salts when gpgsm 2.2 would misread them (``mss.crypto.gnupg22``).
    The legacy RC2 default is never used: modern OpenSSL refuses it. The password is used as
    typed (not normalised). Raises CryptoError for an empty password, an unknown profile or
    a key that is not the certificate's.
    """
    if not isinstance(password, str) or not password:
        raise CryptoError("a PKCS#12 export needs a password")
    if profile not in PKCS12_PROFILES:
        raise CryptoError(f"unknown PKCS#12 profile {profile!r}: {' or '.join(PKCS12_PROFILES)}")
    if not key_matches_certificate(private_key, certificate):
        raise CryptoError("the private key does not belong to the certificate")
    if not friendly_name.strip():
        raise CryptoError("a PKCS#12 friendly name must not be empty")
    if profile == PKCS12_COMPATIBLE:
        _compatible_password(password)
        algorithm = pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC
    else:
        algorithm = pkcs12.PBES.PBESv2SHA256AndAES256CBC
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(PKCS12_KDF_ROUNDS)
        .key_cert_algorithm(algorithm)
        .hmac_hash(hashes.SHA256())
        # The bytes exactly as typed: the mail client that imports the file will not
        # normalise what its user types either.
        .build(password.encode("utf-8"))
    )
    for _ in range(PKCS12_COMPATIBLE_ATTEMPTS):
        data = pkcs12.serialize_key_and_certificates(
            friendly_name.encode("utf-8"),
            private_key,
            certificate,
            [ca_certificate] if ca_certificate is not None else None,
            encryption,
        )
        # Each file gets new random salts; a compatible one must be one gpgsm 2.2 reads.
        if profile != PKCS12_COMPATIBLE or not gnupg22.misreads(data, password):
            return data
    raise CryptoError("no compatible PKCS#12 file could be made that GnuPG 2.2 reads")
