"""Formatting for metadata that a person reads at a glance in the Dagster UI."""

from __future__ import annotations

from collections.abc import Sequence


def rate(num_bytes: float, seconds: float) -> str:
    return f"{num_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s"


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "✅" if value else "❌"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[dict], columns: Sequence[str], limit: int = 50) -> str:
    """A markdown table of `rows`; long tables show failures first, then a count."""
    ordered = sorted(rows, key=lambda r: all(v is not False for v in r.values()))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in ordered[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"\n…and {len(rows) - limit} more rows")
    return "\n".join(lines)
