"""Cryptography: the master key, the PKI, key custody, CMS sign/encrypt/decrypt and verification."""
