"""mss: secure messaging and document exchange for health professionals."""

__version__ = "0.1.0"
