"""Two real TopK SAEs trained on SmolLM2-135M layer-6 activations with different seeds
(saekit.harness.train.ensure_demo_sae("test", seed=0/1), trained once and cached)."""

from __future__ import annotations

import pytest
import torch

from saekit.matching import latents as m

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seeds():
    train = pytest.importorskip("saekit.harness.train")
    import saekit

    return saekit.load(train.ensure_demo_sae("test", seed=0)), saekit.load(train.ensure_demo_sae("test", seed=1))


def test_seeds_give_a_sensible_similarity_distribution(seeds):
    a, b = seeds
    res = m.match(a, b)  # decoder cosine, threshold 0.7, mutual nearest neighbours
    best = res.nearest.a_sim
    q = [round(float(best.quantile(p)), 3) for p in (0.1, 0.25, 0.5, 0.75, 0.9)]
    # Chance level: the same widths with random unit directions (a generator seed other than
    # the trainer's, whose random init the few dead latents still carry).
    g = torch.Generator().manual_seed(12345)
    rand = m._unit_rows(torch.randn(b.cfg.d_sae, b.cfg.d_in, generator=g))
    chance = float(m.nearest(m.latent_vectors(a), rand).a_sim.median())
    print(
        f"\nseed0 vs seed1 ({a.cfg.d_sae} latents): best decoder cosine deciles 10/25/50/75/90% {q}, "
        f"chance median {chance:.3f}; counts at 0.7 {res.summary.counts}"
    )
    assert sum(res.summary.histogram.counts) == a.cfg.d_sae
    assert q[2] > chance + 0.1
    assert all(not m.mapping_errors(r) for r in res.rows)

    # Matched directions are the same features in use: pairs with decoder cosine > 0.5
    # co-activate on real tokens far above chance.
    train = pytest.importorskip("saekit.harness.train")
    acts = train.train_activations(train.SIZES["test"], seed=0)[-2048:]
    Pa = m._unit_rows(m.activation_profiles(a, acts))
    Pb = m._unit_rows(m.activation_profiles(b, acts))
    corr = (Pa * Pb[res.nearest.a_index]).sum(1)
    close = res.nearest.a_sim > 0.5
    print(f"{int(close.sum())} pairs with decoder cosine > 0.5: median co-activation correlation "
          f"{float(corr[close].median()):.3f} (all nearest pairs {float(corr.median()):.3f})")
    assert int(close.sum()) >= 10 and float(corr[close].median()) > 0.5

    # and an SAE against itself is the identity
    self_match = m.match(a, a, by=["decoder", "encoder"])
    assert self_match.summary.counts["same"] == a.cfg.d_sae
    assert [r.b[0] for r in self_match.rows] == list(range(a.cfg.d_sae))
