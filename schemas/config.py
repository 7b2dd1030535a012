"""SAEConfig: what an SAE is, and its round trips to SAELens v6 and sparsify cfg.json.

The canonical artifact's cfg.json is SAELens v6's layout (top-level d_in, d_sae, dtype,
architecture, k, apply_b_dec_to_input, normalize_activations, metadata{model_name,
hook_name, ...}) plus a "saekit" block; SAELens' ``SAE.load_from_disk`` ignores the block.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from saekit.schemas.common import SCHEMA_VERSION, Strict
from saekit.schemas.console import has_control

Architecture = Literal[
    "relu", "topk", "batchtopk", "jumprelu", "gated",
    # transcoders (kernels.architectures: Architecture.transcoder): predict a module's output
    "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
    "topk_transcoder", "topk_skip_transcoder",
]
DType = Literal["float32", "bfloat16", "float16", "float64"]

# Architectures that keep k latents per token (kernels.architectures: Architecture.topk).
_TOPK = ("topk", "batchtopk", "topk_transcoder", "topk_skip_transcoder")
# Architectures with a separate output space (kernels.architectures: Architecture.transcoder).
TRANSCODERS = (
    "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
    "topk_transcoder", "topk_skip_transcoder",
)
# SAELens names relu SAEs "standard".
_FROM_SAELENS_ARCH = {"standard": "relu"}
_TO_SAELENS_ARCH = {"relu": "standard"}
# metadata keys SAELens defines that map onto SAEConfig fields
_META_FIELDS = ("model_name", "hook_name", "hook_name_out", "hook_head_index", "context_size", "prepend_bos")


class Provenance(Strict):
    """How the SAE was trained, as far as anyone recorded it."""

    library: str | None = Field(None, description="e.g. 'sae_lens', 'sparsify', 'saekit'.")
    library_version: str | None = None
    dataset: str | None = None
    tokens: int | None = Field(None, ge=0, description="Training tokens.")
    seed: int | None = None
    source: str | None = Field(None, description="Where the checkpoint was imported from.")


class SAEConfig(Strict):
    """Architecture, shapes and context of one SAE."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    architecture: Architecture
    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0)
    d_out: int | None = Field(None, gt=0, description="Transcoders: width of the output they predict.")
    k: int | None = Field(None, gt=0, description="Active latents per token (topk, batchtopk).")
    dtype: DType = "float32"
    apply_b_dec_to_input: bool = Field(True, description="Subtract b_dec from x before encoding.")
    normalize_activations: str = Field("none", description="SAELens' input normalization name.")
    norm_scaling_factor: float | None = Field(
        None, gt=0, description="expected_average_only_in: the factor inputs are multiplied by (SAELens)."
    )
    rescale_acts_by_decoder_norm: bool = False
    model_name: str | None = Field(None, description="Hub id of the language model.")
    model_revision: str | None = Field(None, description="Commit or tag of the model weights.")
    hook_name: str | None = Field(None, description="Module whose output the SAE reads.")
    hook_name_out: str | None = Field(
        None, description="Transcoders: module whose output they predict (hook_name: whose input they read)."
    )
    hook_head_index: int | None = None
    context_size: int | None = Field(None, gt=0)
    prepend_bos: bool | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Other SAELens metadata keys, kept for the round trip."
    )

    @field_validator("d_in", "d_sae", "d_out", "k", "context_size", "hook_head_index", mode="before")
    @classmethod
    def _plain_int(cls, value: Any) -> Any:
        """Sizes are JSON integers even where a reader validates leniently (strict=False,
        for cfg.json files of other libraries): true, 4.0 or "4" was silently made an int."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"must be an integer, not {value!r}")
        return value

    @field_validator("apply_b_dec_to_input", "rescale_acts_by_decoder_norm", "prepend_bos", mode="before")
    @classmethod
    def _plain_bool(cls, value: Any) -> Any:
        """Switches are JSON true/false, as sizes are integers: "yes", "no" or 0 was made a bool."""
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value

    @field_validator("norm_scaling_factor", mode="before")
    @classmethod
    def _plain_number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"must be a number, not {value!r}")
        return value

    @field_validator("model_name", "model_revision", "hook_name", "hook_name_out")
    @classmethod
    def _one_printable_line(cls, value: str | None) -> str | None:
        """These name things and become tags (saekit.model, saekit.hook) shown by ``show``
        and carried to model cards; a newline or ESC in one could forge output lines, so it
        is refused as the tag rule refuses it (registry.tags.check_text)."""
        if value is not None and has_control(value):
            raise ValueError(f"holds a control character (newline, tab, ESC, ...): {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _transcoder_defaults(cls, data: Any) -> Any:
        """A transcoder's b_dec lives in the output space, so it never shifts the input
        (sae-lens transcoder.py TranscoderConfig.__post_init__ refuses it; sparsify's encode
        skips it when ``transcode``): apply_b_dec_to_input defaults to false for them."""
        if isinstance(data, dict) and data.get("architecture") in TRANSCODERS:
            data = {"apply_b_dec_to_input": False, **data}
        return data

    @model_validator(mode="after")
    def _transcoder_fields(self) -> SAEConfig:
        """d_out and hook_name_out mean something only to transcoders, which need d_out."""
        if self.architecture in TRANSCODERS:
            if self.d_out is None:
                raise ValueError(f"{self.architecture} needs d_out")
            if self.apply_b_dec_to_input:
                raise ValueError(f"apply_b_dec_to_input is not supported for {self.architecture} (b_dec is d_out wide)")
        elif self.d_out is not None or self.hook_name_out is not None:
            raise ValueError(f"d_out and hook_name_out are only for transcoders, not {self.architecture} (remove them)")
        return self

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in TRANSCODERS

    @model_validator(mode="after")
    def _k_fits(self) -> SAEConfig:
        """k means something only to the top-k architectures (kernels.architectures marks
        them ``topk``): there 1 <= k <= d_sae, elsewhere it is refused, not kept unused."""
        if self.architecture in _TOPK:
            if self.k is None:
                raise ValueError(f"{self.architecture} SAE needs k")
            if self.k > self.d_sae:
                raise ValueError(f"k {self.k} > d_sae {self.d_sae}")
        elif self.k is not None:
            raise ValueError(f"k is only for {' and '.join(_TOPK)} SAEs, not {self.architecture} (remove k)")
        return self

    @model_validator(mode="after")
    def _factor_only_when_scaled(self) -> SAEConfig:
        """The factor means something only to expected_average_only_in (kernels.reference);
        beside any other normalization it is refused, not kept unused."""
        if self.norm_scaling_factor is not None and self.normalize_activations != "expected_average_only_in":
            raise ValueError("norm_scaling_factor is only for normalize_activations 'expected_average_only_in', "
                             f"not {self.normalize_activations!r} (remove it)")
        return self

    # --- SAELens v6 ---------------------------------------------------------------------

    def to_saelens_dict(self) -> dict[str, Any]:
        """cfg.json as SAELens v6 writes it, plus the "saekit" block."""
        meta = dict(self.metadata)
        # SAELens reads a cfg.json without metadata.sae_lens_version as a pre-6.0 config and
        # drops model_name/hook_name; this file follows the v6 layout, so say so.
        # The marker is not kept in ``metadata``: it comes from provenance on the way out.
        prov = self.provenance
        meta["sae_lens_version"] = (
            prov.library_version if prov.library == "sae_lens" and prov.library_version else "6.0.0"
        )
        for key in _META_FIELDS:
            value = getattr(self, key)
            if value is not None:
                meta[key] = value
        d: dict[str, Any] = {
            "architecture": _TO_SAELENS_ARCH.get(self.architecture, self.architecture),
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            **({"d_out": self.d_out} if self.d_out is not None else {}),
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            **({"norm_scaling_factor": self.norm_scaling_factor} if self.norm_scaling_factor is not None else {}),
            "metadata": meta,
        }
        if self.k is not None:
            d["k"] = self.k
        if self.architecture == "topk":
            d["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        d["saekit"] = {
            "schema_version": self.schema_version,
            "model_revision": self.model_revision,
            "provenance": self.provenance.model_dump(exclude_none=True),
        }
        return d

    @classmethod
    def from_saelens_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Reads a SAELens v6 cfg.json (with or without the saekit block)."""
        meta = dict(d.get("metadata") or {})
        block = d.get("saekit") or {}
        arch = d.get("architecture", "standard")
        fields: dict[str, Any] = {
            "architecture": _FROM_SAELENS_ARCH.get(arch, arch),
            "d_in": d["d_in"],
            "d_sae": d["d_sae"],
            "d_out": d.get("d_out"),
            "k": d.get("k"),
            "dtype": d.get("dtype", "float32"),
            "apply_b_dec_to_input": d.get("apply_b_dec_to_input", _FROM_SAELENS_ARCH.get(arch, arch) not in TRANSCODERS),
            "normalize_activations": d.get("normalize_activations", "none"),
            "norm_scaling_factor": d.get("norm_scaling_factor", meta.pop("norm_scaling_factor", None)),
            "rescale_acts_by_decoder_norm": d.get("rescale_acts_by_decoder_norm", False),
            "model_revision": block.get("model_revision"),
            "provenance": block["provenance"]
            if "provenance" in block
            else {"library": "sae_lens", "library_version": meta.get("sae_lens_version")},
        }
        for key in _META_FIELDS:
            fields[key] = meta.pop(key, None)
        meta.pop("sae_lens_version", None)  # the v6 format marker, rewritten by to_saelens_dict
        fields["metadata"] = meta
        return cls.model_validate(fields, strict=False)

    # --- sparsify -----------------------------------------------------------------------

    def to_sparsify_dict(self) -> dict[str, Any]:
        """cfg.json as sparsify's ``SparseCoder.save_to_disk`` writes it (TopK SAEs, and TopK
        transcoders with ``transcode`` and ``skip_connection``, d_out = d_in)."""
        transcode = self.architecture in ("topk_transcoder", "topk_skip_transcoder")
        if self.architecture != "topk" and not transcode:
            raise ValueError(f"sparsify holds TopK SAEs and transcoders only, not {self.architecture}")
        if transcode and self.d_out != self.d_in:
            raise ValueError(f"sparsify transcoders predict d_in wide outputs (d_in {self.d_in}, d_out {self.d_out})")
        return {
            "activation": "topk",
            "expansion_factor": max(1, self.d_sae // self.d_in),
            "normalize_decoder": True,
            "num_latents": self.d_sae,
            "k": self.k,
            "multi_topk": False,
            "skip_connection": self.architecture == "topk_skip_transcoder",
            "transcode": transcode,
            "d_in": self.d_in,
        }

    @classmethod
    def from_sparsify_dict(cls, d: dict[str, Any], **context: Any) -> SAEConfig:
        """Reads sparsify's cfg.json; ``context`` adds what it lacks (model_name, hook_name).

        sparsify encodes ``x - b_dec`` (apply_b_dec_to_input) and has no normalization; with
        ``transcode`` it does not subtract b_dec (sparse_coder.py SparseCoder.encode) and its
        output is d_in wide; ``skip_connection`` adds x @ W_skip.T (SparseCoder.forward).
        """
        if d.get("activation", "topk") != "topk":
            raise ValueError(f"activation {d.get('activation')!r} is not supported (topk only)")
        transcode = bool(d.get("transcode"))
        if d.get("skip_connection") and not transcode:
            raise ValueError("a skip connection on an SAE (not a transcoder) is not supported")
        d_in = d["d_in"]
        num_latents = d.get("num_latents") or d_in * d["expansion_factor"]
        arch = ("topk_skip_transcoder" if d.get("skip_connection") else "topk_transcoder") if transcode else "topk"
        return cls.model_validate(
            {
                "architecture": arch,
                "d_in": d_in,
                "d_sae": num_latents,
                "k": d["k"],
                "apply_b_dec_to_input": not transcode,
                **({"d_out": d_in} if transcode else {}),
                **context,
            },
            strict=False,
        )
