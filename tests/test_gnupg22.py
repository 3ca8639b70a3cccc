"""``mss.crypto.gnupg22`` against what GnuPG 2.2's reader computes.

The expected values were computed by the functions of GnuPG 2.2.40's ``sm/minip12.c``
(Debian 12's source, unpatched there) compiled and linked with libgcrypt 1.10.1:
``string_to_key``, ``parse_tag``, ``bag_decrypted_data_p`` and ``bag_data_p``. The salts
of the first two derivations make its quirk strike (a block of the second step written
back without its leading zero byte), one in the salt's half of the input, one in the
password's. ``tests/test_keys.py`` checks the whole against gpgsm itself.
"""

from __future__ import annotations

import pytest

from mss.crypto import gnupg22

UTF8_PASSWORD = "exporté pass 42".encode()

# (diversifier, salt, passphrase bytes, iterations, size) -> what string_to_key derives
DERIVATIONS = [
    (1, "8642917fc66e85e2", UTF8_PASSWORD, 1, 24, "7a409577e335c7d1c14ab0a1d6c4a540a27175f038ed918b"),
    (1, "8642917fc66e85e2", UTF8_PASSWORD, 3, 24, "6856f879fc26379e12c7739074ffababd02470663a9b45af"),
    (2, "8642917fc66e85e2", UTF8_PASSWORD, 1, 8, "e2123691dc3a7d47"),
    (1, "082cdef477cb2258", UTF8_PASSWORD, 1, 24, "ffa1235cf9a1cec33405086d0d8004ae473a1cc025928498"),
    (1, "082cdef477cb2258", UTF8_PASSWORD, 3, 24, "04efb98f5dd2f8ab02e563d4d7eeb1816e46e9bc805761ed"),
    (2, "082cdef477cb2258", UTF8_PASSWORD, 1, 8, "62e3e49eb4de5773"),
    (1, "0102030405060708", b"export pass 42", 1, 24, "b429d75131a7bc06fe53972752252b7d5913fbf076948ed4"),
    (1, "0102030405060708", b"export pass 42", 3, 24, "0b8f5fb93894bc1ef825b0c0288151c034e5882c906184a9"),
    (2, "0102030405060708", b"export pass 42", 1, 8, "3a59c1013c58c32d"),
    (1, "d09fa9ac41d3aca50b29866b2a73c2148e89db41", "Ça été".encode("latin-1"), 1, 24, "c60eba9ac02e79e069c89023922bd595ca427849a365bbb6"),
    (1, "d09fa9ac41d3aca50b29866b2a73c2148e89db41", "Ça été".encode("latin-1"), 3, 24, "3a47994c807520b027216dd3f567d451db22b64a3e52464c"),
    (2, "d09fa9ac41d3aca50b29866b2a73c2148e89db41", "Ça été".encode("latin-1"), 1, 8, "d7ef913313a8b4dc"),
    # 32 bytes: "password too long", nothing derived.
    (1, "0000000000000000", b"a" * 32, 1, 24, None),
]  # fmt: skip

# bytes -> (class, tag, length, header size), or None where parse_tag fails
TAGS = [
    ("", None),
    ("30", None),
    ("3003020100", (0, 16, 3, 2)),
    ("308103616263", (0, 16, 3, 3)),
    ("30820003616263", (0, 16, 3, 4)),
    ("30800000", (0, 16, 0, 2)),  # indefinite length: read as 0
    ("30ff00", None),  # a forbidden length
    ("1f810100", (0, 129, 0, 4)),  # a tag in two bytes
    ("0005", (0, 0, 0, 2)),  # universal tag 0: no length, whatever it says
    ("300500", None),  # longer than what is left
    ("3089010000000000000000", (0, 16, 0, 11)),  # a length of 2^64: wraps to 0
    ("30830100", None),
    ("bfffffffffffffffffff7f00", (2, 2**64 - 1, 0, 12)),  # a tag past 64 bits wraps
    ("1f81", None),
    ("308200", None),
    ("a000", (2, 0, 0, 2)),
    ("10000000", (0, 16, 0, 2)),  # SEQUENCE without its constructed bit
    ("020100", (0, 2, 1, 2)),
]

# bytes -> (bag_decrypted_data_p, bag_data_p)
CHECKS = [
    ("3003020100", (True, True)),
    ("10000000", (True, False)),
    ("3103020100", (False, False)),
    ("3003020101", (True, False)),
    ("300402020000", (True, False)),
    ("3000", (False, False)),
    ("3002ff00", (False, False)),
    ("000000", (False, False)),
    ("300105", (False, False)),
    ("7003020100", (False, False)),
]


@pytest.mark.parametrize(("diversifier", "salt", "passphrase", "iterations", "size", "derived"), DERIVATIONS)
def test_key_derivation_is_gnupgs(
    diversifier: int, salt: str, passphrase: bytes, iterations: int, size: int, derived: str | None
) -> None:
    got = gnupg22._string_to_key(diversifier, bytes.fromhex(salt), passphrase, iterations, size)
    assert (got.hex() if got is not None else None) == derived


def test_misderives_is_where_gnupg_and_the_standard_part() -> None:
    """The first two salts strike the quirk (their derivations above differ from RFC 7292
    B.2's); the third does not."""
    assert gnupg22.misderives(bytes.fromhex("8642917fc66e85e2"), UTF8_PASSWORD, 1)
    assert gnupg22.misderives(bytes.fromhex("082cdef477cb2258"), UTF8_PASSWORD, 1)
    assert not gnupg22.misderives(bytes.fromhex("0102030405060708"), b"export pass 42", 1)


@pytest.mark.parametrize(("data", "parsed"), TAGS)
def test_tags_are_read_as_gnupg_reads_them(data: str, parsed: tuple[int, int, int, int] | None) -> None:
    assert gnupg22._parse_tag(bytes.fromhex(data), 0) == parsed


@pytest.mark.parametrize(("data", "accepted"), CHECKS)
def test_plaintext_checks_are_gnupgs(data: str, accepted: tuple[bool, bool]) -> None:
    plaintext = bytes.fromhex(data)
    assert (gnupg22._certificate_bag_check(plaintext), gnupg22._key_bag_check(plaintext)) == accepted
