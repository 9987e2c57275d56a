"""The config file as the admin API changes it: atomic write-back and a history of versions.

A write goes to a temporary file in the same directory, is fsync'ed, given the
original's mode and owner, and renamed over the original (then the directory is
fsync'ed): a reader (the file watcher, a worker's SIGHUP reload, an editor) sees
either the old file or the new one, never half of one. A symlinked file (a
Kubernetes ConfigMap is one) is written through to its target.

History: `<dir>/.<file name>.history/v000001.json`, ... one JSON file per version
that was live through the admin API (the file as found at the first change is
version 1), the newest `history_size` kept.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from kairos.admin.document import dumps, etag_of
from kairos.config.loader import read_json
from kairos.files import write_atomically


class ConfigStore:
    def __init__(self, path: str, history_size: int = 20) -> None:
        self.path = Path(path)
        self.history_size = history_size

    @property
    def target(self) -> Path:
        return Path(os.path.realpath(self.path))

    @property
    def history_dir(self) -> Path:
        return self.path.parent / f".{self.path.name}.history"

    def read(self) -> tuple[bytes, dict[str, Any]]:
        """The file's bytes and its document (ConfigError if it is not a JSON object)."""
        document = read_json(self.path)
        return self.path.read_bytes(), document

    def etag(self) -> str:
        try:
            return etag_of(self.path.read_bytes())
        except OSError:
            return '"missing"'

    def write(self, document: dict[str, Any]) -> bytes:
        """Replace the file atomically with `document`; returns the bytes written."""
        data = dumps(document)
        write_atomically(self.target, data)
        return data

    # ------------------------------------------------------------------ history

    def _versions(self) -> list[Path]:
        try:
            return sorted(p for p in self.history_dir.iterdir() if p.name.startswith("v") and p.suffix == ".json")
        except OSError:
            return []

    def record(self, document: dict[str, Any], actor: str, summary: dict[str, Any], raw: bytes | None = None) -> int:
        """Keep `document` as the next version; returns its number."""
        versions = self._versions()
        number = int(versions[-1].stem[1:]) + 1 if versions else 1
        self.history_dir.mkdir(mode=0o700, exist_ok=True)
        entry = {
            "version": number,
            "time": time.time(),
            "actor": actor,
            "summary": summary,
            "etag": etag_of(raw if raw is not None else dumps(document)),
            "document": document,
        }
        path = self.history_dir / f"v{number:06d}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds secrets: owner only
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(entry))
        for old in self._versions()[: -self.history_size]:
            with contextlib.suppress(OSError):
                old.unlink()
        return number

    def ensure_initial(self, raw: bytes, document: dict[str, Any]) -> None:
        """Before the first change: keep the file as it was found, so it can be rolled back to."""
        versions = self._versions()
        if versions:
            last = self.entry(int(versions[-1].stem[1:]))
            if last is not None and last.get("etag") == etag_of(raw):
                return
        self.record(document, "file", {"note": "the file as found before an admin change"}, raw)

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for p in reversed(self._versions()):
            with contextlib.suppress(OSError, ValueError):
                entry = orjson.loads(p.read_bytes())
                entry.pop("document", None)
                out.append(entry)
        return out

    def entry(self, version: int) -> dict[str, Any] | None:
        try:
            return orjson.loads((self.history_dir / f"v{version:06d}.json").read_bytes())
        except (OSError, ValueError):
            return None
