"""Watch the config file and reload the gateway when it changes.

The directory is watched, not the file: editors and `os.replace` swap the
file's inode, and Kubernetes ConfigMaps swap a `..data` symlink next to it.
Any event on the file's name (or a `..`-prefixed entry) triggers
`Gateway.reload("file")`, which skips a file whose content did not change,
and keeps the old config if the new one is invalid (a half-written file
included: the write that completes it is one more event).

SIGHUP triggers the same reload (kairos.gateway.install_signal_handlers).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

from kairos.observability.logging import log_event

# Group the events of one write; under a constant stream of other events in the
# directory (a log file next to the config) a batch is yielded at least this often.
DEBOUNCE_MS = 300
STEP_MS = 50


def file_digest(path: str) -> bytes | None:
    """The content's SHA-256 (None when the file cannot be read): a reload skips an unchanged file."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


class ConfigWatcher:
    """Calls `reload("file")` (Gateway.reload) for every batch of events on the config file."""

    def __init__(self, path: str, reload: Callable[[str], Any]) -> None:
        self.reload = reload
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.name = os.path.basename(self.path)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _relevant(self, _change: object, path: str) -> bool:
        base = os.path.basename(path)
        return base == self.name or base.startswith("..")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kairos-config-watch")

    async def _run(self) -> None:
        from watchfiles import awatch

        while not self._stop.is_set():
            try:
                async for _changes in awatch(
                    self.directory,
                    watch_filter=self._relevant,
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    stop_event=self._stop,
                    recursive=False,
                ):
                    self.reload("file")
            except Exception as exc:  # e.g. the directory vanished: retry, never crash the gateway
                log_event("config_watch_error", logging.WARNING, directory=self.directory, error=str(exc))
                try:
                    await asyncio.wait_for(self._stop.wait(), 2.0)
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
