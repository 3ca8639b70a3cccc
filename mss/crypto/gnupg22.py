"""How gpgsm 2.2 (GnuPG in Debian 12) reads a PKCS#12 file, as far as an export must know.

A compatible export (``keys.export_pkcs12``) encrypts the certificate bag and the shrouded
key bag with the PKCS#12 PBE of SHA-1 and 3DES (RFC 7292 appendix B and C). GnuPG 2.2's
reader, ``sm/minip12.c``, refuses some such files made to the standard, depending only on
their random salts, for two reasons:

- it derives a wrong 3DES key for about one salt in 128 (``misderives``); a file has two
  salts, so about one file in 64;
- it tries the passphrase first as its UTF-8 bytes, then converted to ISO-8859-1 and other
  charsets, and keeps the first decryption that its check accepts. That check reads one or
  two DER tags, so with a password outside ASCII about one file in 500 has garbage from the
  UTF-8 attempt pass it, and the import fails further on (``first_attempt_misleads``).

``misreads`` says whether a file has either fault; the export makes such a file again with
new salts. This module reproduces that reader's steps, quirks included: the key derivation,
the 3DES-CBC decryption and the tag checks (``tests/test_gnupg22.py`` holds vectors computed
by GnuPG 2.2.40's own functions). One case is left out: libgcrypt refuses a 3DES key with a
weak DES third, about one derivation in 10^14.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from asn1crypto import pkcs12 as asn1_pkcs12
from asn1crypto.algos import EncryptionAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

_V = 64  # SHA-1 block size, bytes
_KEY_ID = 1  # RFC 7292 B.3 diversifier: key material
_IV_ID = 2  # RFC 7292 B.3 diversifier: IV
_KEY_SIZE = 24  # 3DES
_IV_SIZE = 8
# string_to_key refuses a passphrase of more than 63/2 bytes ("password too long").
_MAX_PASSPHRASE_BYTES = 31
_WORD = (1 << 64) - 1  # minip12.c keeps tags and lengths in an unsigned long
_UNIVERSAL = 0
_TAG_INTEGER = 2
_TAG_SEQUENCE = 16


def _first_input(salt: bytes, passphrase: bytes) -> bytearray:
    """I = S || P of RFC 7292 B.2 as minip12.c builds it: the salt repeated to 64 bytes,
    then each passphrase byte and the trailing zero as a two-byte character, repeated."""
    salt_block = (salt * (_V // len(salt) + 1))[:_V]
    characters = b"".join(b"\x00" + bytes([byte]) for byte in passphrase + b"\x00")
    return bytearray(salt_block + (characters * (_V // len(characters) + 1))[:_V])


def _hash(diversifier: int, data: bytes, iterations: int) -> bytes:
    digest = hashlib.sha1(bytes([diversifier]) * _V + data).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha1(digest).digest()
    return digest


def _next_input(data: bytearray, digest: bytes) -> bool:
    """Each 64-byte block I_j of ``data`` becomes (I_j + B + 1) mod 2^512, written back as
    minip12.c writes it: without leading zero bytes (gcry_mpi_print with no padding), over
    the start of the block, its last bytes left as they were. True when that shortening
    happened, which the standard does not do."""
    b_plus_one = int.from_bytes((digest * (_V // len(digest) + 1))[:_V], "big") + 1
    shortened = False
    for start in (0, _V):
        number = (int.from_bytes(data[start : start + _V], "big") + b_plus_one) % (1 << (8 * _V))
        written = number.to_bytes((number.bit_length() + 7) // 8, "big")
        data[start : start + len(written)] = written
        shortened |= len(written) < _V
    return shortened


def _string_to_key(diversifier: int, salt: bytes, passphrase: bytes, iterations: int, size: int) -> bytes | None:
    """What minip12.c's string_to_key derives, or None where it refuses the passphrase."""
    if len(passphrase) > _MAX_PASSPHRASE_BYTES:
        return None
    data = _first_input(salt, passphrase)
    derived = b""
    while True:
        digest = _hash(diversifier, bytes(data), iterations)
        derived += digest
        if len(derived) >= size:
            return derived[:size]
        _next_input(data, digest)


def misderives(salt: bytes, passphrase: bytes, iterations: int) -> bool:
    """True when GnuPG 2.2 derives another 3DES key from ``salt`` and ``passphrase`` than
    RFC 7292 B.2 does. A 24-byte key takes two SHA-1 blocks; the two differ only when
    the step between them shortens a block (_next_input): each of its two blocks one time in
    256, so about one salt in 128. The IV, one block, is always right."""
    data = _first_input(salt, passphrase)
    return _next_input(data, _hash(_KEY_ID, bytes(data), iterations))


def _parse_tag(data: bytes, position: int) -> tuple[int, int, int, int] | None:
    """minip12.c's parse_tag: (class, tag, length, position after the header), or None
    where it fails. It reads a length past the buffer as a failure, an indefinite length
    as 0, and gives a universal tag 0 no length."""
    end = len(data)
    if position >= end:
        return None
    octet = data[position]
    position += 1
    klass, tag = octet >> 6, octet & 0x1F
    if tag == 0x1F:
        tag = 0
        while True:
            if position >= end:
                return None
            octet = data[position]
            position += 1
            tag = ((tag << 7) | (octet & 0x7F)) & _WORD
            if not octet & 0x80:
                break
    if position >= end:
        return None
    octet = data[position]
    position += 1
    if octet < 0x80:
        length = octet
    elif octet == 0x80:
        length = 0
    elif octet == 0xFF:
        return None
    else:
        length = 0
        for _ in range(octet & 0x7F):
            if position >= end:
                return None
            length = ((length << 8) | data[position]) & _WORD
            position += 1
    if klass == _UNIVERSAL and tag == 0:
        length = 0
    if length > end - position:
        return None
    return klass, tag, length, position


def _certificate_bag_check(plaintext: bytes) -> bool:
    """minip12.c's bag_decrypted_data_p: a universal SEQUENCE tag, then any tag."""
    first = _parse_tag(plaintext, 0)
    if first is None or first[0] != _UNIVERSAL or first[1] != _TAG_SEQUENCE:
        return False
    return _parse_tag(plaintext, first[3]) is not None


def _key_bag_check(plaintext: bytes) -> bool:
    """minip12.c's bag_data_p: a universal SEQUENCE, then the INTEGER 0 in one byte."""
    first = _parse_tag(plaintext, 0)
    if first is None or first[0] != _UNIVERSAL or first[1] != _TAG_SEQUENCE:
        return False
    second = _parse_tag(plaintext, first[3])
    if second is None or second[0] != _UNIVERSAL or second[1] != _TAG_INTEGER or second[2] != 1:
        return False
    return plaintext[second[3]] == 0


def first_attempt_misleads(
    salt: bytes, iterations: int, ciphertext: bytes, password: str, check: Callable[[bytes], bool]
) -> bool:
    """True when GnuPG 2.2's first attempt, the password's UTF-8 bytes used as if each were
    a character, decrypts ``ciphertext`` to something its ``check`` accepts. Only a
    password outside ASCII can: otherwise that attempt is the right one."""
    utf8 = password.encode("utf-8")
    if utf8 == password.encode("latin-1"):
        return False
    key = _string_to_key(_KEY_ID, salt, utf8, iterations, _KEY_SIZE)
    iv = _string_to_key(_IV_ID, salt, utf8, iterations, _IV_SIZE)
    if key is None or iv is None:
        return False  # refused: minip12.c decrypts nothing (zeros), which no check accepts
    decryptor = Cipher(TripleDES(key), modes.CBC(iv)).decryptor()
    return check(decryptor.update(ciphertext) + decryptor.finalize())


_Part = tuple[bytes, int, bytes, Callable[[bytes], bool]]


def _part(algorithm: EncryptionAlgorithm, ciphertext: bytes, check: Callable[[bytes], bool]) -> _Part:
    parameters = algorithm["parameters"]
    return parameters["salt"].native, parameters["iterations"].native, ciphertext, check


def _encrypted_parts(p12: bytes) -> Iterator[_Part]:
    """(salt, iterations, ciphertext, GnuPG's check) of each encrypted part: the
    certificate bag (encrypted data) and the shrouded key bag."""
    for info in asn1_pkcs12.Pfx.load(p12).authenticated_safe:
        kind = info["content_type"].native
        if kind == "encrypted_data":
            content = info["content"]["encrypted_content_info"]
            yield _part(
                content["content_encryption_algorithm"], content["encrypted_content"].native, _certificate_bag_check
            )
        elif kind == "data":
            for bag in asn1_pkcs12.SafeContents.load(info["content"].native):
                if bag["bag_id"].native == "pkcs8_shrouded_key_bag":
                    value = bag["bag_value"]
                    yield _part(value["encryption_algorithm"], value["encrypted_data"].native, _key_bag_check)


def misreads(p12: bytes, password: str) -> bool:
    """True when gpgsm 2.2 would fail to read one of the file's encrypted parts with
    ``password`` (a Latin-1 one): the right attempt derives a wrong key, or the first one
    misleads it. Also true for a password of more than 31 bytes in UTF-8: the first attempt
    then logs an error ("password too long") and gpgsm exits with an error status, even
    when its Latin-1 attempt imports the key."""
    latin1 = password.encode("latin-1")
    if len(password.encode("utf-8")) > _MAX_PASSPHRASE_BYTES:
        return True
    return any(
        misderives(salt, latin1, iterations) or first_attempt_misleads(salt, iterations, ciphertext, password, check)
        for salt, iterations, ciphertext, check in _encrypted_parts(p12)
    )
