"""Every registry tag name saekit reads or writes, in one place (like mlflow's mlflow_tags).

Tags under ``saekit.`` and ``metric.`` carry meaning and are written only by the code that
earns them: registration (identity, shape, readiness, provenance), the check (verdict,
headline metrics) and the release (where it was published). No user-facing entry point
(CLI ``--tag``, ``saekit.register``, ``set_tags``) accepts them; see ``is_reserved``.
"""

from __future__ import annotations

from saekit.schemas.console import has_control
from saekit.schemas.errors import InputError

# Prefixes: every tag under these is saekit's to write.
PREFIX = "saekit."
METRIC_PREFIX = "metric."  # the check: one tag per headline metric, ``metric.<name>``
RESERVED_PREFIXES = (PREFIX, METRIC_PREFIX)

# --- registration (registry.store) -----------------------------------------------------
READY = "saekit.ready"  # "true" once the files were uploaded, read back and verified
SHA = "saekit.sha256"  # the artifact's sha256 (also a tag of its MLflow run)
FILES = "saekit.files"  # JSON {filename: sha256} of the artifact's files
NAME = "saekit.name"  # on the MLflow run: the registered model it belongs to
ARCHITECTURE = "saekit.architecture"
D_IN = "saekit.d_in"
D_SAE = "saekit.d_sae"
K = "saekit.k"
DTYPE = "saekit.dtype"
MODEL = "saekit.model"
MODEL_REVISION = "saekit.model_revision"
HOOK = "saekit.hook"
SCHEMA_VERSION = "saekit.schema_version"
KIND = "saekit.kind"  # "transcoder_set" for a set; absent for one SAE or transcoder
LAYERS = "saekit.layers"  # a set's layers, comma-separated
D_OUT = "saekit.d_out"  # transcoders
HOOK_OUT = "saekit.hook_out"  # transcoders: the module whose output they predict

# Tags registration writes; users cannot override them with --tag.
RESERVED_TAGS = frozenset(
    {READY, SHA, FILES, ARCHITECTURE, D_IN, D_SAE, K, MODEL, MODEL_REVISION, HOOK, SCHEMA_VERSION, DTYPE,
     KIND, LAYERS, D_OUT, HOOK_OUT}
)

# --- registration from a source (registry.hub_source, through registry.store.record_tags): provenance
SOURCE = "saekit.source"  # the pinned source URI (hf://ORG/REPO@COMMIT/PATH)
SOURCE_REPO = "saekit.source.repo"
SOURCE_COMMIT = "saekit.source.commit"
SOURCE_PATH = "saekit.source.path"
SOURCE_LAYOUT = "saekit.source.layout"
SOURCE_FILES = "saekit.source.files"  # JSON {filename: sha256} of the source files
SOURCE_SAELENS = "saekit.source.saelens"  # RELEASE/SAE_ID when named through SAELens
SOURCE_SAELENS_CFG = "saekit.source.saelens_cfg"
SOURCE_SAELENS_OVERRIDES = "saekit.source.saelens_overrides"
SOURCE_AVERAGE_L0 = "saekit.source.average_l0"  # Gemma Scope
SOURCE_WIDTH = "saekit.source.width"  # Gemma Scope
SOURCE_LAYER = "saekit.source.layer"  # Gemma Scope

# --- the check (harness.check, through registry.store.log_check) ------------------------
EVAL_ID = "saekit.eval_id"  # the BenchmarkRecord's eval_id
GATE = "saekit.gate"  # "pass" or "fail"
GATE_FAILED = "saekit.gate_failed"  # the failing rules with their measured values
CHECK_RUN = "saekit.check_run"  # the MLflow run of the last check (params, dataset input, metrics)


def metric(name: str) -> str:
    """The tag of a headline metric (written by the check)."""
    return f"{METRIC_PREFIX}{name}"


# --- the release (releases.publish, through registry.store.record_tags) -----------------
HUB_COMMIT = "saekit.hub_commit"
HUB_REPO = "saekit.hub_repo"
HUB_TAG = "saekit.hub_tag"


def check_text(key: str, value: str) -> None:
    """A tag is one printable line (shown by ``saekit show``, carried to model cards): a key
    or value holding a newline or ESC could forge output lines, so it is refused."""
    if has_control(key) or has_control(value):
        raise InputError("tag keys and values may not hold control characters (newline, tab, ESC, ...)",
                         where=repr(key))


def is_reserved(key: str) -> bool:
    """Whether a tag key is saekit's to write (see RESERVED_PREFIXES)."""
    return key.strip().lower().startswith(RESERVED_PREFIXES)
