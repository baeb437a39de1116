"""API keys for writes: bearer tokens checked against every configured key, rotated by editing the keys file."""

from __future__ import annotations

import os

import pytest

from serving.auth import KEYS_ENV, ApiKeys, AuthConfigError, keys_required

KEY, OTHER = "k" * 20 + "-first-key", "o" * 20 + "-second-key"


def test_keys_are_required_beyond_loopback_unless_switched_off():
    assert not keys_required("auto", "127.0.0.1") and not keys_required("auto", "::1")
    assert not keys_required("auto", "localhost")
    assert keys_required("auto", "0.0.0.0") and keys_required("auto", "10.1.2.3") and keys_required("auto", "shop")
    assert keys_required("true", "127.0.0.1") and not keys_required("false", "0.0.0.0")
    with pytest.raises(AuthConfigError, match="require_api_key"):
        keys_required("maybe", "127.0.0.1")


def test_required_keys_must_exist_and_be_long(tmp_path, monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    with pytest.raises(AuthConfigError, match="none is configured"):
        ApiKeys(required=True)
    short = tmp_path / "keys"
    short.write_text("# the shop's keys\nabc\n")
    with pytest.raises(AuthConfigError, match=r"keys: key\(s\) \[1\] shorter than 16"):
        ApiKeys(str(short))
    with pytest.raises(AuthConfigError, match="does not exist"):
        ApiKeys(str(tmp_path / "missing"))


def test_only_a_configured_bearer_key_writes_and_rotation_needs_no_restart(tmp_path, monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# comment\n\n{KEY}\n")
    keys = ApiKeys(str(keys_file), required=True, recheck_s=0.0)
    assert keys.allows(f"Bearer {KEY}") and keys.allows(f"bearer  {KEY}")
    for header in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Bearer {OTHER}"):
        assert not keys.allows(header), header
    keys_file.write_text(f"{KEY}\n{OTHER}\n")  # rotation: the new key added ...
    os.utime(keys_file, ns=(1, 1))
    assert keys.allows(f"Bearer {OTHER}") and keys.allows(f"Bearer {KEY}")
    keys_file.write_text(f"{OTHER}\n")  # ... then the old one removed
    os.utime(keys_file, ns=(2, 2))
    assert keys.allows(f"Bearer {OTHER}") and not keys.allows(f"Bearer {KEY}")
    keys_file.write_text("short\n")  # a broken edit keeps the keys that worked
    os.utime(keys_file, ns=(3, 3))
    assert keys.allows(f"Bearer {OTHER}")


def test_keys_from_the_environment_and_open_writes_on_loopback_without_keys(monkeypatch):
    monkeypatch.setenv(KEYS_ENV, f"{KEY},{OTHER}")
    keys = ApiKeys()
    assert keys.allows(f"Bearer {OTHER}") and not keys.allows(None)  # configured keys are always checked
    monkeypatch.delenv(KEYS_ENV)
    assert ApiKeys().allows(None)  # loopback, none configured, not required: open
