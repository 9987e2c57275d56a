"""kairos: an ASGI API gateway, successor of kairos-rs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_app", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m kairos.demo` or `kairos validate` do not import the whole gateway.
    if name == "create_app":
        from kairos.app import create_app

        return create_app
    raise AttributeError(name)
