"""saekit.matching: latent matching across SAEs (``saekit diff``), mapping files, and carrying
feature-card annotations along a mapping (``saekit cards carry``). See saekit.matching.latents.
"""

from saekit.matching.latents import (
    CarryResult,
    Matching,
    Nearest,
    activation_profiles,
    carry,
    check_mapping_fits,
    latent_vectors,
    lm_activations,
    match,
    match_vectors,
    nearest,
    read_mapping,
    read_summary,
    relate,
    summary_path,
    write_mapping,
)

__all__ = [
    "CarryResult",
    "Matching",
    "Nearest",
    "activation_profiles",
    "carry",
    "check_mapping_fits",
    "latent_vectors",
    "lm_activations",
    "match",
    "match_vectors",
    "nearest",
    "read_mapping",
    "read_summary",
    "relate",
    "summary_path",
    "write_mapping",
]
