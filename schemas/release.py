"""ReleaseManifest and the gate policy a release is held to."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from saekit.schemas.common import SCHEMA_VERSION, Hex64, Strict
from saekit.schemas.console import has_control

_RULE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<|==)\s*(-?[\d.]+(?:e-?\d+)?)\s*$")


class GateRule(Strict):
    """One threshold, e.g. ``explained_variance >= 0.7``; also written as that string."""

    metric: str = Field(min_length=1)
    op: Literal[">=", "<=", ">", "<", "=="]
    value: float

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            m = _RULE.match(data)
            if not m:
                raise ValueError(f"rule {data!r} is not 'metric OP number'")
            return {"metric": m[1], "op": m[2], "value": float(m[3])}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # The string form is accepted too, so the JSON Schema says so (pydantic == jsonschema).
        schema = handler.resolve_ref_schema(handler(core_schema))
        return {"anyOf": [schema, {"type": "string", "pattern": _RULE.pattern}]}

    def holds(self, measured: float) -> bool:
        """Whether a measured value satisfies the rule (NaN never does)."""
        if measured != measured:
            return False
        return {
            ">=": measured >= self.value,
            "<=": measured <= self.value,
            ">": measured > self.value,
            "<": measured < self.value,
            "==": measured == self.value,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


class GatePolicy(Strict):
    """The thresholds an SAE must meet before a release may include it."""

    rules: list[GateRule] = Field(default_factory=list)


class RuleResult(Strict):
    rule: GateRule
    measured: float | None = Field(None, description="None when the metric was not measured.")
    passed: bool


class GateVerdict(Strict):
    """A policy applied to one EvalReport: every rule with its measured value."""

    passed: bool
    results: list[RuleResult]

    @property
    def failing(self) -> list[RuleResult]:
        return [r for r in self.results if not r.passed]


class BaseModelRef(Strict):
    id: str = Field(min_length=1, description="Hub id of the language model.")
    revision: str | None = Field(None, description="Commit or tag of the model weights.")


_SAE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$"
# Names at the top of a bundle that saekit writes itself (releases.bundle); no SAE folder may take one.
BUNDLE_ENTRIES = frozenset({"browser", "plots", "release.json", "SHA256SUMS", "README.md", "pretrained_saes.yaml"})
BUNDLE_FORMAT = "saekit-release/1"


class ReleaseSAE(Strict):
    """One SAE of a release: where it comes from and its folder name in the repo."""

    ref: str = Field(min_length=1, description="Registry reference, e.g. 'smollm2-res-l6@production'.")
    sae_id: str = Field(pattern=_SAE_ID)
    neuronpedia: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$",
        description="Neuronpedia id (MODEL/SOURCE, e.g. 'gemma-2-2b/12-gemmascope-res-16k') when the SAE is on "
                    "Neuronpedia; carried into the release's SAELens registry entry.",
    )
    cards: str | None = Field(
        None, min_length=1,
        description="A .jsonl of feature cards to release instead of the check's, e.g. the output of `saekit cards "
                    "explain` or `cards score` (relative to the manifest); every card must be for this SAE (sae.sha256).",
    )


class ReleaseManifest(Strict):
    """What a release contains and the bar it must clear (YAML in the user's repo)."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    release_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(
        pattern=r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$",
        description="Semantic version; the Hub tag is 'v' + version.",
    )
    license: str = Field(min_length=1)
    base_model: BaseModelRef
    saes: list[ReleaseSAE] = Field(min_length=1)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    hub_repo: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
    description: str | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("saes")
    @classmethod
    def _sae_folders_apart(cls, saes: list[ReleaseSAE]) -> list[ReleaseSAE]:
        """Each sae_id is a folder of the bundle: two may not be the same folder, nest one
        inside the other (``a`` and ``a/b``), or take a bundle file's name. Compared
        case-folded, as a case-insensitive disk would."""
        folders: dict[str, str] = {}
        for sid in (s.sae_id for s in saes):
            if sid.split("/")[0].casefold() in {entry.casefold() for entry in BUNDLE_ENTRIES}:
                raise ValueError(f"sae_id {sid!r} collides with a bundle file or folder")
            if sid.casefold() in folders:
                raise ValueError(f"sae_id values must be unique ({folders[sid.casefold()]!r} and {sid!r})")
            folders[sid.casefold()] = sid
        for folded, sid in folders.items():
            parts = folded.split("/")
            for parent in ("/".join(parts[:i]) for i in range(1, len(parts))):
                if parent in folders:
                    raise ValueError(f"sae_id {sid!r} nests inside sae_id {folders[parent]!r}; SAE folders may not nest")
        return saes

    @model_validator(mode="after")
    def _names_are_printable(self) -> ReleaseManifest:
        """Names end up in terminal lines, Hub tags and model cards: one printable line each
        (sae_id, release_id, hub_repo are held by their patterns; the description may span lines)."""
        names = [self.license, self.base_model.id, self.base_model.revision or "", *self.tags,
                 *(s.ref for s in self.saes)]
        for name in names:
            if has_control(name):
                raise ValueError(f"{name!r} holds a control character (newline, tab, ESC, ...)")
        return self


class BundlePin(Strict):
    name: str = Field(min_length=1)
    version: int = Field(ge=1)


class BundleSAE(Strict):
    """One SAE as a bundle's release.json lists it."""

    sae_id: str = Field(pattern=_SAE_ID)
    ref: str = Field(min_length=1)
    registry: BundlePin
    sha256: Hex64
    gate: Literal["pass"]
    eval_id: str | None
    metrics: dict[str, Any]
    d_in: int | None
    d_sae: int | None
    architecture: str | None
    n_cards: int = Field(ge=0)
    card_files: list[str]


class ReleaseBundle(Strict):
    """A bundle's release.json as saekit writes it (releases.bundle): build validates what it
    writes with it, and a folder is taken for a saekit bundle (replaceable with --force,
    publishable) only when its release.json parses as this."""

    format: Literal["saekit-release/1"]
    release_id: str
    version: str
    tag: str
    hub_repo: str
    built_from_epoch_millis: int | None
    saekit_version: str
    manifest: ReleaseManifest
    saes: list[BundleSAE] = Field(min_length=1)
    records: dict[str, Any]
    files: dict[str, Hex64]

    @model_validator(mode="after")
    def _agrees_with_manifest(self) -> "ReleaseBundle":
        m = self.manifest
        if (self.release_id, self.version, self.tag, self.hub_repo) != (m.release_id, m.version, f"v{m.version}", m.hub_repo):
            raise ValueError("release_id, version, tag or hub_repo differ from the manifest's")
        if [s.sae_id for s in self.saes] != [s.sae_id for s in m.saes]:
            raise ValueError("saes differ from the manifest's")
        return self
