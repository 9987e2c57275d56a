"""The process's current tracer, kept across reloads (a handle in kairos.deps.LayerDeps).

This module does not import OpenTelemetry: the SDK is an optional extra, loaded
only when a config enables tracing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kairos.tracing.config import TracingConfig
    from kairos.tracing.tracer import Tracer


class Tracers:
    """The process's current Tracer, rebuilt only when the `tracing` block changes.

    A replaced provider is shut down (its queue flushed) on a thread of its own,
    so a reload never waits for a slow collector."""

    def __init__(self) -> None:
        self.current: Tracer | None = None

    def for_config(self, config: TracingConfig) -> Tracer | None:
        current = self.current
        if current is not None and current.config == config:
            return current
        if config.enabled:
            from kairos.tracing.tracer import Tracer

            self.current = Tracer(config)
        else:
            self.current = None
        if current is not None:
            threading.Thread(target=current.shutdown, name="kairos-tracer-shutdown", daemon=True).start()
        return self.current

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Flush and stop the current tracer at shutdown, waiting at most `timeout_s`: a collector
        that is down must not hold the process (the SDK's exporter retries for up to 5 s)."""
        current, self.current = self.current, None
        if current is None:
            return
        thread = threading.Thread(target=current.shutdown, name="kairos-tracer-shutdown", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
