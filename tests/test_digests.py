"""The two digest schemes a record's file entries use, and that each catches a change."""

from __future__ import annotations

import hashlib

import pytest

from resources.storage import digests

DATA = bytes(range(256)) * 1000  # 256,000 bytes


@pytest.mark.parametrize("chunk", [1000, 4096, 100_000])
def test_part_digests_do_not_depend_on_how_the_bytes_arrive(chunk):
    entry = digests.recompute({"part_size": 65536}, [DATA])
    assert entry["parts_sha256"] == [
        hashlib.sha256(DATA[i : i + 65536]).hexdigest() for i in range(0, len(DATA), 65536)
    ]
    pieces = [DATA[i : i + chunk] for i in range(0, len(DATA), chunk)]
    assert digests.chunks_match(pieces, entry)


def test_whole_file_entries_of_older_records_still_verify(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(DATA)
    old = {"size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}
    assert digests.file_matches(path, old)
    assert digests.short(old) == old["sha256"][:16] + "…"


@pytest.mark.parametrize("scheme", [{}, {"part_size": 65536}])
def test_one_changed_byte_or_a_truncation_is_caught(tmp_path, scheme):
    entry = digests.recompute(scheme, [DATA])
    changed = bytearray(DATA)
    changed[200_000] ^= 1
    assert not digests.chunks_match([bytes(changed)], entry)
    assert not digests.chunks_match([DATA[:-1]], entry)
    assert digests.chunks_match([DATA], entry)
