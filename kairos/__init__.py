"""kairos: an ASGI API gateway, successor of kairos-rs."""

__version__ = "0.1.0"

from kairos.app import create_app  # noqa: E402

__all__ = ["create_app", "__version__"]
