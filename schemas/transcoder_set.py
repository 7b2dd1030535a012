"""TranscoderSetInfo: the ``set.json`` of a transcoder set artifact (one registry version
holding one transcoder per layer of a model; see saekit.registry.transcoder_set)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from saekit.schemas.common import SCHEMA_VERSION, Hex64, Strict
from saekit.schemas.console import has_control


class TranscoderLayer(Strict):
    """One layer of a set: where its SAELens-loadable folder is, its hooks and its identity."""

    layer: int = Field(ge=0, description="Layer index in the model.")
    path: str = Field(pattern=r"^layer_\d+$", description="Folder of the layer's canonical artifact: layer_{layer}.")
    hook_in: str | None = Field(None, description="Module whose input the transcoder reads.")
    hook_out: str | None = Field(None, description="Module whose output it predicts.")
    sha256: Hex64 = Field(description="The layer artifact's sha256 (cfg.json and weights).")

    @field_validator("hook_in", "hook_out")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and has_control(value):
            raise ValueError(f"holds a control character: {value!r}")
        return value

    @model_validator(mode="after")
    def _path_is_layer(self) -> TranscoderLayer:
        if self.path != f"layer_{self.layer}":
            raise ValueError(f"path {self.path!r} of layer {self.layer} must be 'layer_{self.layer}'")
        return self


class TranscoderSetInfo(Strict):
    """The saekit block of set.json: schema version, model, revision and the layers."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    kind: Literal["transcoder_set"] = "transcoder_set"
    model_name: str | None = None
    model_revision: str | None = None
    layers: list[TranscoderLayer] = Field(min_length=1, description="Sorted by layer, each once.")

    @model_validator(mode="after")
    def _sorted_unique(self) -> TranscoderSetInfo:
        got = [entry.layer for entry in self.layers]
        if got != sorted(set(got)):
            raise ValueError(f"layers must be sorted and unique, got {got}")
        return self
