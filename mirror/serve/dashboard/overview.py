"""The projects page and the status page.

Status is what ``wandb-mirror status`` prints, line for line (``mirror.status.write_report``):
one source of truth for both, so the dashboard never says something the CLI does not.
"""

from __future__ import annotations

import io
import re

from sqlalchemy import Connection, Engine

from mirror.serve.dashboard.html import esc, page, url
from mirror.status import write_report
from mirror.store.status import project_statuses

_CODE = re.compile(r"`([^`]+)`")


def projects_page(conn: Connection) -> str:
    """Every mirrored project with its size, last sync and queued edits."""
    rows = []
    for st in project_statuses(conn):
        entity, _, project = st.path.partition("/")
        edits = ", ".join(f"{n} {status}" for status, n in sorted(st.edits.items())) or "none"
        rows.append(
            f'<tr><td><a href="{esc(url("projects", entity, project))}">{esc(st.path)}</a></td>'
            f'<td class="num">{st.runs:,}</td><td class="num">{st.history_rows:,}</td>'
            f"<td>{esc(st.last_success_at or 'never')}</td><td>{esc(edits)}</td></tr>"
        )
    if not rows:
        body = (
            "<h1>Projects</h1><p>The mirror holds no project yet: "
            "<code>wandb-mirror sync ENTITY/PROJECT</code> fetches one.</p>"
        )
    else:
        body = (
            '<h1>Projects</h1><table class="runs" id="projects"><thead><tr><th>project</th>'
            "<th>runs</th><th>history rows</th><th>last synced</th><th>queued edits</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return page("Projects", body)


def _line(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", esc(text))


def status_page(engine: Engine, backup_dest: str) -> str:
    """``wandb-mirror status`` as a page: a heading per project, its facts beneath."""
    buffer = io.StringIO()
    write_report(engine, backup_dest, buffer)
    parts: list[str] = []
    items: list[str] = []

    def close() -> None:
        if items:
            parts.append(f"<ul>{''.join(items)}</ul>")
            items.clear()

    for text in buffer.getvalue().splitlines():
        if text.startswith(" "):
            items.append(f"<li>{_line(text.strip())}</li>")
            continue
        close()
        parts.append(f"<p>{_line(text)}</p>")
    close()
    body = f'<h1>Status</h1><div class="status" id="status">{"".join(parts)}</div>'
    return page("Status", body, [("status", "/status")])
