"""The tables of meterline's self-contained report pages (the dispute report, the billing review):
one heading and one table per section, every value escaped (customer ids are user data)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def section_tables(sections: Iterable[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[str]:
    parts = []
    for title, rows in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if not rows:
            parts.append("<p>None.</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0]) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>")
        parts.append("</table>")
    return parts
