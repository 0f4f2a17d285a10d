"""API keys for the server: HTTP Basic ``api:<key>``, as W&B's clients send them.

Keys are compared in constant time and never logged or echoed back. With no key configured the
server accepts any request, which is only allowed on a loopback address (see ``server``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping

KEYS_ENV = "WANDB_MIRROR_SERVE_KEYS"


def configured_keys(
    cli_keys: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Keys from ``--api-key`` options plus ``WANDB_MIRROR_SERVE_KEYS`` (comma-separated)."""
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in cli_keys]
    keys += [k.strip() for k in environ.get(KEYS_ENV, "").split(",")]
    return tuple(dict.fromkeys(k for k in keys if k))


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic`` header (the API key), or ``None``."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


class KeyChecker:
    """Decides whether a request's credentials are good enough."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    @property
    def required(self) -> bool:
        """Whether requests must carry one of the configured keys."""
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """True for a valid key, or for anything when no key is configured."""
        if not self._keys:
            return True
        password = basic_password(authorization)
        if password is None:
            return False
        given = password.encode()
        return any(hmac.compare_digest(given, key) for key in self._keys)


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
