"""The base of the config blocks that live in their feature's own module (cache, compression, admin).

It depends on pydantic only, so models.py can import those modules without a loop.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


def problem(message: str) -> PydanticCustomError:
    """A validation error whose text is shown to the user as is (with its JSON path)."""
    return PydanticCustomError("kairos", message)


def _positive(value: int) -> int:
    if value <= 0:
        raise problem("must be greater than 0")
    return value


def _non_negative(value: int | float) -> int | float:
    if value < 0:
        raise problem("must not be negative")
    return value


PositiveInt = Annotated[int, AfterValidator(_positive)]
NonNegativeInt = Annotated[int, AfterValidator(_non_negative)]
NonNegativeFloat = Annotated[float, AfterValidator(_non_negative)]


class Block(BaseModel):
    """Unknown keys are errors, instances are immutable (like models.Model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
