"""Request ids: which user an answer was issued to and which variant answered, in one positive int64.

Layout (most significant first): 38 random bits, 2 bits of variant (`VARIANTS`), a 22-bit HMAC-SHA256 tag of
(those 40 bits, the user id) under the app's key. /feedback can then refuse an id the app never issued to that
user, and feedback splits by variant, with no state shared between replicas or kept across restarts; a guessed id
passes with probability 2**-22. On the wire the id is a decimal string: it exceeds 2**53, which JavaScript's
numbers cannot hold exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

KEY_ENV = "RECSYS_REQUEST_KEY"  # hex; overrides the key file
KEY_FILE = "request.key"  # under the event log folder, mode 0600
RANDOM_BITS, VARIANT_BITS, TAG_BITS = 38, 2, 22
VARIANTS = ("production", "candidate")
ID_BITS = RANDOM_BITS + VARIANT_BITS + TAG_BITS


def new_id() -> int:
    """A random positive int64 (unique without coordination between replicas)."""
    return secrets.randbits(62) + 1


def variant_of(request_id: int) -> str:
    """The variant that answered a request (its id's variant bits); "unknown" for codes not in use."""
    code = (request_id >> TAG_BITS) & ((1 << VARIANT_BITS) - 1)
    return VARIANTS[code] if code < len(VARIANTS) else "unknown"


class RequestIds:
    """Issues and checks request ids under one key (`request_key`)."""

    def __init__(self, key: bytes):
        self._key = key

    def _tag(self, nonce: int, user_id: int) -> int:
        digest = hmac.new(self._key, f"{nonce}:{user_id}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") >> (64 - TAG_BITS)

    def issue(self, user_id: int, variant: str = "production") -> int:
        nonce = (secrets.randbits(RANDOM_BITS) << VARIANT_BITS) | VARIANTS.index(variant)
        return (nonce << TAG_BITS) | self._tag(nonce, user_id)

    def issued_to(self, request_id: int, user_id: int) -> bool:
        nonce, tag = request_id >> TAG_BITS, request_id & ((1 << TAG_BITS) - 1)
        return 0 <= request_id < 1 << ID_BITS and hmac.compare_digest(
            tag.to_bytes(3, "big"), self._tag(nonce, user_id).to_bytes(3, "big"))


def request_key(root: str | Path) -> bytes:
    """The key of `RequestIds`: ``$RECSYS_REQUEST_KEY`` (hex), else ``<root>/request.key``, created once (mode
    0600) and then shared by every replica that writes the same event log."""
    if value := os.environ.get(KEY_ENV):
        return bytes.fromhex(value)
    path = Path(root) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(50):  # another replica may be between creating the file and writing it
        if text := path.read_text().strip():
            return bytes.fromhex(text)
        threading.Event().wait(0.1)
    raise RuntimeError(f"{path} is empty")
