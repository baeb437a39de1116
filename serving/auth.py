"""Who may write: the shop's API keys, sent as ``Authorization: Bearer <key>`` on ``/feedback`` and ``/events``.

Keys come from a file (``api_keys_file``: one key per line, ``#`` comments and blank lines ignored; re-read when it
changes, so a key is rotated by adding the new one, moving the clients over, then deleting the old one) and from
``$RECSYS_API_KEYS`` (comma-separated). A key is compared with every configured key by its SHA-256 digest with
`hmac.compare_digest`, all of them every time: how long a check takes says nothing about how close a guess was.

Keys are required when the app listens beyond loopback (``require_api_key: auto``, the default), or always
(``true``); with ``false`` writes are open (loopback development only: `recsys serve` refuses ``false`` on a public
address). Reads (``/recommend``) stay open on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from pathlib import Path

from recsys.errors import RecsysError

KEYS_ENV = "RECSYS_API_KEYS"
REQUIRE = ("auto", "true", "false")
MIN_KEY_CHARS = 16


class AuthConfigError(RecsysError, ValueError):
    """Keys are required but none is configured, or a configured key is too short to be a secret."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable from elsewhere
        return False


def keys_required(require: str, host: str) -> bool:
    if require not in REQUIRE:
        raise AuthConfigError(f"require_api_key must be one of {', '.join(REQUIRE)}, got {require!r}")
    return require == "true" or (require == "auto" and not is_loopback(host))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse(text: str, where: str) -> list[str]:
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    short = [n for n, k in enumerate(keys, 1) if len(k) < MIN_KEY_CHARS]
    if short:
        raise AuthConfigError(f"{where}: key(s) {short} shorter than {MIN_KEY_CHARS} characters: an API key must "
                              "be a long random secret (e.g. python -c 'import secrets; print(secrets.token_urlsafe"
                              "(32))')")
    return keys


class ApiKeys:
    """The configured keys (digests only), and the check of a request's ``Authorization`` header."""

    def __init__(self, keys_file: str = "", required: bool = False, recheck_s: float = 1.0):
        self.keys_file, self.required, self.recheck_s = Path(keys_file) if keys_file else None, required, recheck_s
        self._digests: list[bytes] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._load()
        if self.required and not self._digests:
            raise AuthConfigError(
                "writes need an API key here (the app listens beyond loopback, or require_api_key is true) and none "
                f"is configured: put keys in api_keys_file (one per line) or ${KEYS_ENV} (comma-separated)")

    def _load(self) -> None:
        keys = _parse(os.environ.get(KEYS_ENV, "").replace(",", "\n"), f"${KEYS_ENV}")
        stamp = None
        if self.keys_file is not None:
            try:
                info = self.keys_file.stat()
                stamp = (info.st_mtime_ns, info.st_size)
                keys += _parse(self.keys_file.read_text(), str(self.keys_file))
            except FileNotFoundError:
                raise AuthConfigError(f"api_keys_file {self.keys_file} does not exist") from None
        self._digests, self._stamp = [_digest(k) for k in keys], stamp

    def _refresh(self) -> None:
        """Re-read the keys file when it changed (at most every ``recheck_s``); a broken edit keeps the old keys."""
        now = time.monotonic()
        if self.keys_file is None or now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            info = self.keys_file.stat()
            if (info.st_mtime_ns, info.st_size) != self._stamp:
                self._load()
        except (OSError, AuthConfigError):
            pass

    @property
    def enforced(self) -> bool:
        return self.required or bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may write."""
        self._refresh()
        if not self.enforced:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        offered = _digest(token.strip()) if scheme.lower() == "bearer" else b""
        match = False
        for known in self._digests:  # every key, every time
            match |= hmac.compare_digest(offered, known)
        return match
