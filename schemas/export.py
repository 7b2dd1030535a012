"""Generate the committed JSON Schema files (draft 2020-12) from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from saekit.schemas import safeio
from saekit.schemas.benchmark import BenchmarkRecord
from saekit.schemas.card import FeatureCard
from saekit.schemas.config import SAEConfig
from saekit.schemas.matching import LatentMatch
from saekit.schemas.release import ReleaseManifest
from saekit.schemas.transcoder_set import TranscoderSetInfo

JSON_DIR = Path(__file__).parent / "json"
ID_BASE = "https://saekit.dev/schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

# file stem -> model; a new schema is one more line here
MODELS: dict[str, type[BaseModel]] = {
    "feature_card": FeatureCard,
    "sae_config": SAEConfig,
    "release_manifest": ReleaseManifest,
    "benchmark_record": BenchmarkRecord,
    "latent_match": LatentMatch,
    "transcoder_set": TranscoderSetInfo,
}


def json_schema(stem: str) -> dict:
    """The JSON Schema of one model, with ``$schema`` and a versioned ``$id``."""
    model = MODELS[stem]
    version = model.model_fields["schema_version"].default  # each document type versions on its own
    schema = model.model_json_schema(mode="validation")
    return {"$schema": DIALECT, "$id": f"{ID_BASE}/{version}/{stem}.json", **schema}


def render(stem: str) -> str:
    """The exact text committed under schemas/json/ (stable key order, trailing newline)."""
    return json.dumps(json_schema(stem), indent=2, sort_keys=True) + "\n"


def export(out_dir: Path = JSON_DIR) -> list[Path]:
    """Write every schema file; returns the paths written."""
    paths = {stem: Path(out_dir) / f"{stem}.json" for stem in MODELS}
    safeio.check_writable(*paths.values())
    return [safeio.write_bytes(path, render(stem).encode()) for stem, path in paths.items()]


def stale(json_dir: Path | None = None) -> list[str]:
    """The schema files under ``json_dir`` (default JSON_DIR) missing or differing from the models."""
    json_dir = json_dir or JSON_DIR
    return [s for s in MODELS if not (json_dir / f"{s}.json").is_file() or (json_dir / f"{s}.json").read_text() != render(s)]


def load_committed(stem: str) -> dict:
    """The committed schema, as shipped in the package."""
    return json.loads((JSON_DIR / f"{stem}.json").read_text())
