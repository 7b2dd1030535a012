"""saekit.schemas: the contract. pydantic models, their JSON Schemas, and the error types.

Imports nothing of the project and nothing heavier than pydantic.
"""

from saekit.schemas.benchmark import (
    BenchmarkRecord,
    CardsConfig,
    CheckConfig,
    DataInfo,
    DownstreamMethod,
    Hardware,
    MetricDefinition,
    ModelInfo,
    Timings,
)
from saekit.schemas.card import (
    ActivationExample,
    ActivationStats,
    Annotation,
    AnnotationProvenance,
    CardProvenance,
    CarriedFrom,
    DownstreamEval,
    ExampleRef,
    ExampleSource,
    FeatureCard,
    Histogram,
    LogitEffect,
    LogitEffects,
    SAERef,
    SamplingParams,
    ScoreRecord,
    SimilarLatent,
    consistency_errors,
)
from saekit.schemas.common import SCHEMA_VERSION
from saekit.schemas.config import Provenance, SAEConfig
from saekit.schemas.errors import (
    ArtifactFormatError,
    CardValidationError,
    EndpointError,
    HubError,
    GateFailedError,
    InputError,
    IntegrityError,
    NotFoundError,
    PublishError,
    ReferenceSyntaxError,
    RegistryError,
    SaekitError,
    UnsafePathError,
    UnsupportedSAEError,
)
from saekit.schemas.transcoder_set import TranscoderLayer, TranscoderSetInfo
from saekit.schemas.release import (
    BaseModelRef,
    GatePolicy,
    GateRule,
    GateVerdict,
    ReleaseManifest,
    ReleaseSAE,
    RuleResult,
)

__all__ = [name for name in dir() if not name.startswith("_")]
