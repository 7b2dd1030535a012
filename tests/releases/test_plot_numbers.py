"""The release's density plot describes every latent of the SAE, from the check's per-latent
fire counts, and agrees with the record's dead/alive numbers (not only the carded latents)."""

from __future__ import annotations

from pathlib import Path

from saekit.releases.bundle import latent_densities
from saekit.releases.modelcard import SAEEntry
from saekit.releases.plots import density_histogram, density_label
from saekit.schemas import BenchmarkRecord

D_SAE = 64


def _record(densities: list[float]) -> BenchmarkRecord:
    dead = sum(d == 0 for d in densities) / len(densities)
    return BenchmarkRecord.model_validate({
        "eval_type_id": "core", "eval_config": {}, "eval_id": "x", "datetime_epoch_millis": 0,
        "eval_result_metrics": {"sparsity": {"dead_fraction": dead}, "misc_metrics": {"frac_alive": 1 - dead},
                                "token_stats": {"total_tokens_evaluated": 1000}},
        "eval_result_details": [{"index": i, "feature_density": d} for i, d in enumerate(densities)],
        "sae": {"name": "s", "version": "1", "d_sae": D_SAE},
    })


def test_density_plot_covers_every_latent_and_matches_the_record(tmp_path: Path):
    densities = [0.0 if i % 7 == 0 else (i + 1) / 1000 for i in range(D_SAE)]
    rec = _record(densities)
    # cards for the 8 most active latents only: none of them dead
    cards = [{"index": i, "stats": {"density": densities[i]}} for i in range(D_SAE - 8, D_SAE)]
    entry = SAEEntry("s", "s@1", "s", 1, "ab" * 32, {"d_sae": D_SAE}, rec, "pass", len(cards), [])
    got, n_tokens = latent_densities(entry, tmp_path, cards)
    assert got == densities and n_tokens == 1000
    label = density_label("s", got, D_SAE)
    n_dead = round(rec.metric("dead_fraction") * D_SAE)
    assert n_dead == 10 and label == f"s ({D_SAE} latents, {n_dead} dead)"
    assert 1 - n_dead / D_SAE == rec.metric("frac_alive")
    assert density_histogram({"s": got}, {"s": n_tokens}, {"s": D_SAE})[:4] == b"\x89PNG"


def test_without_details_the_plot_says_it_holds_carded_latents_only(tmp_path: Path):
    cards = [{"index": i, "stats": {"density": 0.01}} for i in range(8)]
    entry = SAEEntry("s", "s@1", "s", 1, "ab" * 32, {"d_sae": D_SAE}, None, "pass", len(cards), [])
    got, _ = latent_densities(entry, tmp_path, cards)
    assert density_label("s", got, D_SAE) == f"s (8 of {D_SAE} latents, 0 dead)"
