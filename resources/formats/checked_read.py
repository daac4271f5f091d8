"""A stored file read once for a reader and for its checks at the same time, checked
before the reader sees it.

The serve loader, `modelpub verify` and the round-trip check each read a tensors file
through tensorizer and need its digest against the version record (the signed record,
where one is). `CheckedRead` gives tensorizer a file whose bytes a thread fetches from the
store ahead of the reader. Where the record keeps a digest per part (every tensors file
modelpub writes), each part is read into a buffer of its own, hashed on a pool of threads
(parts are independent, so every core can hash one) and held back until its sha256 is the
one the record names; checked parts are handed on in order. tensorizer, and vLLM after
it, only ever see bytes that were checked, its header included, and a file changed in
the store fails at the first changed part. Those bytes are then exactly what was
published and proved, so tensorizer's own per-tensor hashes add nothing and are skipped
(`checked_first`). A whole-file digest (records from before streaming) can only be
compared at the end, in `finish`.

The buffers are reused: a few parts' worth, whatever the size of the file, each filled
again only once the reader has moved past it and the whole-file hasher is done with it.
The store's bytes are read into them (the bytes checked are the bytes handed on: a
writer of the store cannot change them in between), and no fresh memory is faulted in
for every chunk.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from resources.storage import digests
from resources.storage.store import StoreError

# parts read and hashed ahead of the reader, and as many threads hashing them
DEPTH = max(2, min(8, os.cpu_count() or 1))


class ChangedInStore(StoreError):
    """A part of the file is not the one its record names."""


def checked_first(stream: object) -> bool:
    """Whether every byte a reader gets from `stream` was checked against the record
    before it got it (a CheckedRead of a file whose record keeps a digest per part)."""
    return isinstance(stream, CheckedRead) and stream.checks_parts


class _Buffer:
    """One part's (or chunk's) bytes, filled again once each of its users let it go."""

    def __init__(self, size: int, free: queue.Queue[_Buffer]):
        self.data = bytearray(size)
        self._free = free
        self._users = 0
        self._lock = threading.Lock()

    def lend(self, users: int) -> None:
        self._users = users

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._free.put(self)


class _Buffers:
    """At most `count` buffers of `size` bytes, made as they are first needed."""

    def __init__(self, count: int, size: int):
        self._free: queue.Queue[_Buffer] = queue.Queue()
        self._left, self._size = count, size

    def take(self, block: bool) -> _Buffer | None:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._left:
                self._left -= 1
                return _Buffer(self._size, self._free)
            return self._free.get() if block else None


class CheckedRead(io.RawIOBase):
    """`stream` (a stored file, open for reading, as the store's `open_read` gives it) as
    a readable file that only goes forward; `finish()` reads what the reader left and
    returns the file's digests. `whole`: compute the whole file's sha256 too (what a
    signature names), in the same pass."""

    def __init__(self, stream: BinaryIO, entry: digests.Entry, whole: bool = True):
        super().__init__()
        self.digester = digests.Digester(entry, whole=whole)
        self.checks_parts = "parts_sha256" in entry
        self.changed = False  # a part differed from the record: nothing from it on is read
        self._entry = entry
        self._stream = stream
        part = entry.get("part_size") or digests.CHUNK
        # each buffer: with the reader (1), being filled (1), checked ahead (DEPTH),
        # queued for the reader or the whole-file hasher (DEPTH)
        self._buffers = _Buffers(2 * DEPTH + 2, part)
        self._queue: queue.Queue[tuple[memoryview, _Buffer] | BaseException | None] = queue.Queue()
        self._chunk, self._at, self._pos, self._ended = memoryview(b""), 0, 0, False
        self._holding: _Buffer | None = None  # the buffer `_chunk` is a view of
        self._error: BaseException | None = None  # the store's, raised again by finish
        self._failure: BaseException | None = None  # what every read raises from here on
        self._stopped = False  # `stop`: read no further
        # the whole file's sha256 on a thread of its own where parts are checked too:
        # it is one hash of every byte, in order, where the parts' are many
        self._wholes: queue.Queue[tuple[memoryview, _Buffer] | None] | None = None
        self._threads = [threading.Thread(target=self._fetch, name="modelpub-read", daemon=True)]
        if whole and self.checks_parts:
            self._wholes = queue.Queue()
            self._threads.append(
                threading.Thread(target=self._hash_whole, name="modelpub-hash", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    # --- the fetch thread ---------------------------------------------------------------

    def _fetch(self) -> None:
        pending: collections.deque[tuple[memoryview, _Buffer, Future[str]]] = collections.deque()
        hashers = ThreadPoolExecutor(DEPTH, thread_name_prefix="modelpub-part")
        try:
            while not self._stopped:
                buffer = self._buffers.take(block=False)
                while buffer is None:  # every buffer is out: pass the oldest part on first
                    if pending:
                        self._pass_on(*pending.popleft())
                    buffer = self._buffers.take(block=not pending)
                view = memoryview(buffer.data)[: _fill(self._stream, buffer.data)]
                if not view:
                    buffer.lend(1)
                    buffer.release()
                    break
                buffer.lend(1 + (self._wholes is not None))
                if self._wholes is not None:
                    self._wholes.put((view, buffer))
                if self.checks_parts:
                    pending.append((view, buffer, hashers.submit(_sha256, view)))
                    while pending and pending[0][2].done():
                        self._pass_on(*pending.popleft())
                else:  # a whole-file record: known only at the end, in `finish`
                    self.digester.update(view)
                    self._hand_on(view, buffer)
            while pending:
                self._pass_on(*pending.popleft())
            ended = self.checks_parts and not self.changed and not self._stopped
            if ended and not self.digester.matches(self._entry):  # each part matched: fewer
                read, size = self.digester.size, self._entry["size"]
                self._refuse(f"it holds {read} bytes where its record names {size}")
            if not self.changed:
                self._queue.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the reader instead
            for view, buffer, done in pending:  # what was checked before the failure
                with contextlib.suppress(BaseException):
                    self._pass_on(view, buffer, done)
            self._error = exc
            if not self.changed:
                self._queue.put(exc)
        finally:
            hashers.shutdown()
            if self._wholes is not None:
                self._wholes.put(None)
            with contextlib.suppress(Exception):
                self._stream.close()  # the store's stream, where it was left before its end

    def _pass_on(self, view: memoryview, buffer: _Buffer, sha256: Future[str]) -> None:
        """A part hashed: recorded, and handed on if it is the one the record names."""
        index, expected = len(self.digester.parts), self._entry["parts_sha256"]
        self.digester.add_part(len(view), sha256.result())
        if not self.changed and (index >= len(expected) or sha256.result() != expected[index]):
            self._refuse(f"part {index} of the file is not the one its record names")
        self._hand_on(view, buffer)

    def _hand_on(self, view: memoryview, buffer: _Buffer) -> None:
        if self.changed or self._stopped:
            buffer.release()  # hashed for the digests `finish` reports, never handed on
        else:
            self._queue.put((view, buffer))

    def _refuse(self, problem: str) -> None:
        self.changed = True
        self._queue.put(ChangedInStore(problem))

    def _hash_whole(self) -> None:
        while (item := self._wholes.get()) is not None:
            view, buffer = item
            self.digester.update_whole(view)
            buffer.release()

    # --- the reader's side --------------------------------------------------------------

    def _next(self) -> bool:
        """Whether bytes are left to read (fetching the next chunk when needed)."""
        while self._at == len(self._chunk):
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return False
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._failure = item
                continue
            if item is None:
                self._ended = True
                return False
            self._let_go()  # the reader has moved past it: it may be filled again
            (self._chunk, self._holding), self._at = item, 0
        return True

    def _let_go(self) -> None:
        if self._holding is not None:
            self._holding.release()
            self._chunk, self._holding = memoryview(b""), None

    # --- what tensorizer calls --------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos - self._at:
            raise io.UnsupportedOperation("a checked read only goes forward")
        if target < self._pos:  # back within the chunk at hand
            self._at -= self._pos - target
            self._pos = target
        while self._pos < target and self._next():
            step = min(target - self._pos, len(self._chunk) - self._at)
            self._at += step
            self._pos += step
        return self._pos

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out):
            try:
                if not self._next():
                    break
            except Exception:
                if done:
                    break  # the bytes before the failure first; the next read raises it
                raise
            step = min(len(out) - done, len(self._chunk) - self._at)
            out[done : done + step] = self._chunk[self._at : self._at + step]
            self._at += step
            done += step
        self._pos += done
        return done

    def close(self) -> None:
        """tensorizer closes the file when it is done with it; `finish` ends the read."""

    # --- what the checker calls ---------------------------------------------------------

    def finish(self) -> digests.Digester:
        """Read the rest (tensorizer need not read to the end, nor at all after an
        error) and return the digests of the whole file (a file that `changed` is still
        hashed to its end, never handed on). Raises the store's error where the read
        itself failed."""
        try:
            while self._next():
                self._at = len(self._chunk)
        except Exception:  # noqa: BLE001 - a changed part (`changed`) or the store's, raised below
            pass
        self._let_go()
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error
        return self.digester

    def stop(self) -> None:
        """End the read where it is, for a reader that failed or left early: no more of
        the file is fetched (a wrong key found at the first tensor does not read the
        whole model for nothing). Where every byte handed on was checked first
        (`checks_parts`), what the reader hit cannot be a change in the store, so the
        rest is not needed to say what went wrong; a changed part found before the stop
        still sets `changed`. A read that ended already is left as it is."""
        self._stopped = True
        self._let_go()
        while any(thread.is_alive() for thread in self._threads):
            with contextlib.suppress(queue.Empty):  # what the fetch thread handed on
                item = self._queue.get(timeout=0.05)
                if isinstance(item, tuple):
                    item[1].release()
        for thread in self._threads:
            thread.join()


def _fill(stream: BinaryIO, into: bytearray) -> int:
    """Read from `stream` until `into` is full or the stream ends: how many bytes."""
    view, done = memoryview(into), 0
    while done < len(into):
        read = stream.readinto(view[done:])
        if not read:
            break
        done += read
    return done


def _sha256(view: memoryview) -> str:
    return hashlib.sha256(view).hexdigest()
