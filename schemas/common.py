"""Shared pieces of every saekit schema: the strict base model and constrained types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

SCHEMA_VERSION = "1.0"

# Strict so that pydantic accepts exactly what the exported JSON Schema accepts:
# no "1" -> 1 coercion, no unknown keys, no NaN/inf (JSON has neither).
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=False)

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# RFC 3339 date-time, as a pattern both pydantic and JSON Schema validators enforce
# (JSON Schema's "format" is only an annotation by default).
Timestamp = Annotated[
    str,
    StringConstraints(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
    ),
]


class Strict(BaseModel):
    """Base of every saekit schema model."""

    model_config = STRICT
