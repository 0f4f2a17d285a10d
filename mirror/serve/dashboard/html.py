"""Small helpers for server-rendered pages: escaping, links, value formatting and the layout.

Pages are plain HTML built from escaped pieces: no template engine to ship or learn, and
every value from the mirror passes through :func:`esc` (run names, tags and config values are
whatever users logged).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, urlencode

from mirror import __version__

#: query strings of the asset URLs: a new version is a new URL, so caches never serve old code
ASSET_VERSION = __version__


def esc(value: object) -> str:
    """Text for HTML, quotes included (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def url(*segments: str, **params: str | int | Sequence[str] | None) -> str:
    """``/seg/seg?k=v``: each segment escaped whole (run ids and names may hold anything);
    None and empty parameters are left out, lists become repeated parameters."""
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, (list, tuple)):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, str(value)))
    return path + ("?" + urlencode(pairs) if pairs else "")


def fmt(value: object) -> str:
    """A value as a table cell shows it: numbers to 6 significant digits, media as their type."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value:.6g}"
    if isinstance(value, dict):
        if "_type" in value:
            return f"[{value['_type']}]"
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in list(value.items())[:8]) + "}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value[:20]) + (" …" if len(value) > 20 else "")
    return str(value)


def key_values(values: Mapping[str, object], empty: str) -> str:
    """A two-column table of a mapping (config, summary), keys sorted."""
    if not values:
        return f'<p class="muted">{esc(empty)}</p>'
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(fmt(values[k]))}</td></tr>" for k in sorted(values)
    )
    return f'<table class="kv">{rows}</table>'


def options(choices: Iterable[str], selected: Iterable[str]) -> str:
    """``<option>`` elements, the selected ones marked."""
    chosen = set(selected)
    return "".join(
        f'<option value="{esc(c)}"{" selected" if c in chosen else ""}>{esc(c)}</option>'
        for c in choices
    )


def page(
    title: str, body: str, crumbs: Sequence[tuple[str, str]] = (), charts: bool = False
) -> str:
    """The whole document: header, breadcrumbs, body; the chart scripts only where drawn."""
    trail = "".join(f' / <a href="{esc(href)}">{esc(label)}</a>' for label, href in crumbs)
    scripts = ""
    styles = f'<link rel="stylesheet" href="/static/dashboard.css?v={ASSET_VERSION}">'
    if charts:
        styles += f'<link rel="stylesheet" href="/static/uPlot.min.css?v={ASSET_VERSION}">'
        scripts = (
            f'<script src="/static/uPlot.iife.min.js?v={ASSET_VERSION}"></script>'
            f'<script src="/static/charts.js?v={ASSET_VERSION}"></script>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)} · wandb-mirror</title>{styles}</head><body>"
        f'<header><a class="brand" href="/">wandb-mirror</a>{trail}'
        '<nav><a href="/">Projects</a><a href="/status">Status</a></nav></header>'
        f"<main>{body}</main>{scripts}</body></html>"
    )
