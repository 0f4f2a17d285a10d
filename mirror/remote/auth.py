"""Where W&B lives and which key opens it, found the way ``wandb login`` left them.

The key comes from ``WANDB_API_KEY``, else from netrc for the base URL's host (``$NETRC``, else
``~/.netrc``, the file ``wandb login`` writes). The mirror never writes netrc, never prompts and
never stores the key: it lives only in this object, which keeps it out of its repr.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mirror.errors import ConfigError

DEFAULT_BASE_URL = "https://api.wandb.ai"


@dataclass(frozen=True)
class Credentials:
    """A W&B host and the key for it; ``source`` says where the key was found (never the key)."""

    base_url: str
    api_key: str = field(repr=False)
    source: str = "given"

    @property
    def host(self) -> str:
        """``host[:port]``, as netrc and error messages name it."""
        return urlsplit(self.base_url).netloc

    def login_hint(self) -> str:
        """What a user runs to give the mirror a working key for this host."""
        return f"run `wandb login --host {self.base_url}` or set WANDB_API_KEY"


def normalise_base_url(url: str) -> str:
    """``https://host[:port]`` with no trailing slash; refuses what is not an http(s) URL."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"the W&B base URL must look like https://api.wandb.ai, not {url!r}")
    return text


def _netrc_key(host: str, environ: Mapping[str, str]) -> tuple[str | None, str]:
    path = Path(environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not path.is_file():
        return None, str(path)
    try:
        # exactly the host[:port] `wandb login` wrote: never a key meant for another port
        found = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        reason = exc.msg if isinstance(exc, netrc.NetrcParseError) else exc.strerror
        raise ConfigError(f"{path}: cannot read netrc: {reason}") from None
    if found is None or not found[2]:
        return None, str(path)
    return found[2], str(path)


def resolve_credentials(
    base_url: str | None = None,
    api_key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """The base URL (argument, ``WANDB_BASE_URL``, default) and its key, or a ConfigError.

    The error names the host and how to log in, so a missing key is one readable line.
    """
    environ = os.environ if environ is None else environ
    url = normalise_base_url(base_url or environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    if api_key:
        return Credentials(url, api_key, "given")
    if environ.get("WANDB_API_KEY"):
        return Credentials(url, environ["WANDB_API_KEY"], "WANDB_API_KEY")
    host = urlsplit(url).netloc
    key, where = _netrc_key(host, environ)
    if key is None:
        raise ConfigError(
            f"no W&B API key for {host}: run `wandb login --host {url}` or set WANDB_API_KEY "
            f"(looked in WANDB_API_KEY and {where})"
        )
    return Credentials(url, key, f"netrc ({where})")
