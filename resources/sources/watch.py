"""Watching hub refs for new commits: which tracked refs moved since the last look.

Plain logic behind the publish sensor. A catalog of hundreds of entries is polled a
chunk at a time, in parallel and under a time budget, so each sensor tick stays well
inside Dagster's sensor timeout however slow the hub is. The cursor remembers the last
sha seen per item and where the next chunk starts; entries never seen before jump the
queue so a new catalog entry is picked up on the next tick.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WatchedItem:
    """Something published from a hub ref: a catalog model today, an adapter tomorrow.

    `name` is unique among all watched items: it keys the cursor and prefixes run keys
    (`<name>@<sha>`), so two kinds of item with the same partition key stay apart.
    """

    name: str
    job: str
    partitions: str
    partition: str
    repo_id: str
    hub: str
    ref: str


@dataclass
class WatchCursor:
    seen: dict[str, str] = field(default_factory=dict)
    position: int = 0

    def to_json(self) -> str:
        return json.dumps({"seen": self.seen, "position": self.position}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> WatchCursor:
        """The cursor a tick left behind; none (a first tick, a reset) starts afresh."""
        if not text:
            return cls()
        data = json.loads(text)
        return cls(seen=dict(data.get("seen", {})), position=int(data.get("position", 0)))


@dataclass
class PollResult:
    changed: list[tuple[WatchedItem, str]]
    errors: list[tuple[WatchedItem, str]]
    deferred: list[WatchedItem]
    polled: list[WatchedItem]
    cursor: WatchCursor


def next_chunk(
    items: Sequence[WatchedItem], cursor: WatchCursor, size: int
) -> tuple[list[WatchedItem], int]:
    """Up to `size` items: unseen ones first, then round-robin from `cursor.position`."""
    unseen = [i for i in items if i.name not in cursor.seen][:size]
    seen = [i for i in items if i.name in cursor.seen]
    take = min(size - len(unseen), len(seen))
    start = cursor.position % len(seen) if seen else 0
    rotation = [seen[(start + n) % len(seen)] for n in range(take)]
    return unseen + rotation, (start + take) % len(seen) if seen else 0


def poll(
    items: Sequence[WatchedItem],
    resolve: Callable[[WatchedItem], str],
    cursor: WatchCursor,
    chunk: int = 50,
    workers: int = 8,
    budget_s: float = 20.0,
) -> PollResult:
    """Resolve one chunk of refs and report which moved; the input cursor is not changed.

    An item whose resolve raises is reported in `errors` and keeps its old sha, so it is
    tried again next round; one that has not answered within `budget_s` is `deferred`
    (its thread is left to finish on its own) and the tick returns anyway. Either way a
    new item joins the rotation (with an empty sha), so failing entries cannot starve
    the rest by jumping the queue forever.
    """
    batch, position = next_chunk(items, cursor, chunk)
    names = {i.name for i in items}
    seen = {n: s for n, s in cursor.seen.items() if n in names}
    changed: list[tuple[WatchedItem, str]] = []
    errors: list[tuple[WatchedItem, str]] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(batch))))
    try:
        futures = {pool.submit(resolve, item): item for item in batch}
        done, _ = wait(futures, timeout=budget_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for future, item in futures.items():
        seen.setdefault(item.name, "")
        if future not in done:
            continue
        try:
            sha = future.result()
        except Exception as exc:  # noqa: BLE001 - one bad entry must not fail the tick
            errors.append((item, f"{type(exc).__name__}: {exc}"))
            continue
        if seen.get(item.name) != sha:
            changed.append((item, sha))
        seen[item.name] = sha
    return PollResult(
        changed=changed,
        errors=errors,
        deferred=[item for future, item in futures.items() if future not in done],
        polled=batch,
        cursor=WatchCursor(seen=seen, position=position),
    )
