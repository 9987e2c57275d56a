"""The base of the config blocks that live in their feature's own module (cache, compression, admin).

It depends on pydantic only, so models.py can import those modules without a loop.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


def problem(message: str) -> PydanticCustomError:
    """A validation error whose text is shown to the user as is (with its JSON path)."""
    return PydanticCustomError("kairos", message)


class Block(BaseModel):
    """Unknown keys are errors, instances are immutable (like models.Model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
