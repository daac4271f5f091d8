"""One line per published version, as `modelpub list` prints it and the Dagster UI shows it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from resources.registry.records import AdapterVersion, AliasRecord, VersionRecord

COLUMNS = ["reference", "sha", "dtype", "format", "size", "published", "aliases", "verified"]
HISTORY_COLUMNS = ["at", "alias", "from", "to", "why", "by", "reason"]


def human_size(num_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{int(num_bytes)} B"


class VersionSummary(BaseModel):
    """What a person (or a script, with `--json`) wants to see of a version at a glance."""

    model_config = ConfigDict(frozen=True)

    reference: str
    sha: str
    dtype: str
    format: str
    size: int  # bytes, every file
    published: str | None
    aliases: list[str]
    verified: bool  # the round trip passed when it was published
    base: str | None = None  # an adapter's base version

    @classmethod
    def of(cls, record: VersionRecord, aliases: dict[str, str]) -> VersionSummary:
        """`aliases`: the repo's alias -> suffix map."""
        return cls(
            reference=record.reference,
            sha=record.hf_sha,
            dtype=record.dtype,
            format=record.format,
            size=sum(f["size"] for f in record.files.values()),
            published=record.published_at,
            aliases=sorted(a for a, s in aliases.items() if s == record.suffix),
            verified=bool(record.validation.get("passed")),
            base=record.base_reference if isinstance(record, AdapterVersion) else None,
        )

    def cells(self) -> dict[str, str]:
        """The row as text: short sha, human size, `-` for nothing."""
        return {
            "reference": self.reference + (f" (on {self.base})" if self.base else ""),
            "sha": self.sha[:12],
            "dtype": self.dtype,
            "format": self.format,
            "size": human_size(self.size),
            "published": (self.published or "-").replace("+00:00", "Z"),
            "aliases": ",".join(self.aliases) or "-",
            "verified": "yes" if self.verified else "no",
        }


def alias_history(records: Iterable[AliasRecord]) -> list[dict[str, Any]]:
    """Every history entry of these aliases, oldest first, each naming its alias: what
    `modelpub history --json` prints."""
    entries = [{"alias": r.alias, **e.model_dump(mode="json")} for r in records for e in r.history]
    return sorted(entries, key=lambda e: e["at"])


def history_cells(entry: dict[str, Any]) -> dict[str, str]:
    """An `alias_history` entry as a row of HISTORY_COLUMNS, `-` for nothing."""
    return {
        "at": entry["at"].replace("+00:00", "Z"),
        "alias": entry["alias"],
        "from": entry["from_suffix"] or "-",
        "to": entry["to_suffix"],
        "why": entry["why"],
        "by": entry["by"],
        "reason": entry["reason"] or "-",
    }


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """An aligned plain-text table with a header row, for terminals and logs."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [[c.upper() for c in columns], *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
