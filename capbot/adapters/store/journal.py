"""The usage journal: a small append-only file holding what was sampled since the last DB commit.

Why: a SQLite commit costs the SD card about 15-20 KiB of page writes (WAL frame and wal-index
pages), whatever it carries, so committing every minute costs 25-35 MB a day. Appending one line
to this file costs one page. The sampler appends a *cumulative* record (every minute row, bucket
row and raw counter since the last commit) at each flush and commits to the database every
`storage.commit_interval`; a record is idempotent, so only the last valid one matters.

Exactly once: the database commit stores the record's token (`capbot_meta`) in the same
transaction, so after a crash between that commit and clearing the journal the record is
recognised as already applied. Lines carry a CRC32, so a torn last line is ignored.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from capbot.errors import StorageError

COMPACT_BYTES = 256 * 1024  # rewrite the file with only its last record beyond this


class UsageJournal:
    """Append-only records with a checksum per line; `last()` is the state that counts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (no fsync: as durable as a WAL commit with synchronous=NORMAL)."""
        body = json.dumps(record, separators=(",", ":"), sort_keys=True)
        line = f"{zlib.crc32(body.encode()):08x} {body}\n".encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > COMPACT_BYTES:
                self._rewrite(line)
        except OSError as exc:
            raise StorageError(f"cannot write the usage journal {self.path}: {exc}") from exc

    def _rewrite(self, line: bytes) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(line)
        os.replace(tmp, self.path)

    def last(self) -> dict[str, Any] | None:
        """The newest intact record, or None."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read the usage journal {self.path}: {exc}") from exc
        for raw in reversed(data.splitlines()):
            crc, _, body = raw.partition(b" ")
            try:
                if int(crc, 16) == zlib.crc32(body):
                    record: dict[str, Any] = json.loads(body)
                    return record
            except ValueError:
                continue  # a torn or damaged line: an earlier record still holds
        return None

    def clear(self) -> None:
        """Forget every record (after they reached the database)."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot clear the usage journal {self.path}: {exc}") from exc
