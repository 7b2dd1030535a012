"""saekit.matching on random SAEs and edited copies of them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from matching_helpers import permuted, random_sae, split_copy, with_latents

from saekit.matching import latents as m
from saekit.schemas import ArtifactFormatError, InputError
from saekit.schemas.matching import LatentMatch, mapping_errors


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return inv


@pytest.mark.parametrize(
    "by, assignment, block, precision",
    [
        (["decoder"], "mnn", 100, "float32"),  # tiles that do not divide 512
        (["decoder"], "mnn", 100, "bfloat16"),
        (["decoder", "encoder"], "exact", 4096, "float32"),
        (["decoder", "encoder", "coact"], "mnn", 128, "float32"),
        (["coact", "decoder"], "auto", 64, "bfloat16"),
    ],
)
def test_permuted_copy_recovers_the_permutation(by, assignment, block, precision):
    sae = random_sae(d_in=64, d_sae=512)
    perm = torch.randperm(512, generator=torch.Generator().manual_seed(3))
    other = permuted(sae, perm)
    acts = torch.randn(1024, 64, generator=torch.Generator().manual_seed(4)) if "coact" in by else None
    result = m.match(sae, other, by=by, acts=acts, assignment=assignment, block=block, precision=precision)
    inv = _inverse(perm)
    assert len(result.rows) == 512
    assert all(r.relation == "same" for r in result.rows)
    assert [r.b[0] for r in result.rows] == inv.tolist()
    assert min(r.similarity for r in result.rows) > 0.999
    assert result.summary.counts == {"same": 512, "split": 0, "merge": 0, "new": 0, "gone": 0}
    assert result.summary.assignment == ("mnn" if assignment == "mnn" else "exact")
    assert result.summary.histogram.counts[-1] == 512


def test_blocked_nearest_equals_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    U = m._unit_rows(torch.randn(301, 40, generator=g))
    V = m._unit_rows(torch.randn(517, 40, generator=g))
    near = m.nearest(U, V, block=64)
    S = U @ V.T
    assert torch.equal(near.a_index, S.argmax(1))
    assert torch.equal(near.b_index, S.argmax(0))
    torch.testing.assert_close(near.a_sim, S.max(1).values)
    torch.testing.assert_close(near.b_sim, S.max(0).values)
    # bf16 ranking: near-ties may swap, but every similarity is the exact fp32 one of its pair
    fast = m.nearest(U, V, block=64, precision="bfloat16")
    assert (fast.a_index == near.a_index).float().mean() > 0.9
    torch.testing.assert_close(fast.a_sim, S[torch.arange(301), fast.a_index])
    torch.testing.assert_close(fast.b_sim, S[fast.b_index, torch.arange(517)])
    assert float((near.a_sim - fast.a_sim).max()) < 0.02


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_split_latents_are_flagged(noise):
    sae = random_sae(d_in=64, d_sae=512)
    split = [0, 7, 100, 511]
    other = split_copy(sae, split, noise=noise)
    result = m.match(sae, other)
    rows = {r.a: r for r in result.rows}
    for n, i in enumerate(split):
        assert rows[i].relation == "split"
        assert sorted(rows[i].b) == [i, 512 + n]
        assert min(rows[i].b_similarity) > 0.9
        assert rows[i].b_similarity == sorted(rows[i].b_similarity, reverse=True)
    assert result.summary.counts == {"same": 508, "split": 4, "merge": 0, "new": 0, "gone": 0}

    # the other way round, the two halves merge into one latent
    back = m.match(other, sae)
    merged = [r for r in back.rows if r.relation == "merge"]
    assert sorted((r.a, r.b[0]) for r in merged) == sorted([(i, i) for i in split] + [(512 + n, i) for n, i in enumerate(split)])
    assert back.summary.counts["merge"] == 8 and back.summary.counts["same"] == 508


def test_pruned_and_grown_latents_are_gone_and_new():
    sae = random_sae(d_in=64, d_sae=256)
    keep = torch.arange(0, 240)  # latents 240..255 of A are gone
    fresh = random_sae(d_in=64, d_sae=10, seed=9)  # 10 unrelated latents are new in B
    other = with_latents(
        sae,
        torch.cat([sae.W_dec[keep], fresh.W_dec]),
        torch.cat([sae.W_enc[:, keep], fresh.W_enc], dim=1),
        torch.cat([sae.b_enc[keep], fresh.b_enc]),
    )
    result = m.match(sae, other, threshold=0.7)
    c = result.summary.counts
    assert c == {"same": 240, "split": 0, "merge": 0, "new": 10, "gone": 16}
    gone = [r for r in result.rows if r.relation == "gone"]
    assert [r.a for r in gone] == list(range(240, 256)) and all(r.b == [] and r.similarity < 0.7 for r in gone)
    new = [r for r in result.rows if r.relation == "new"]
    assert sorted(r.b[0] for r in new) == list(range(240, 250)) and all(r.a is None for r in new)
    assert all(not mapping_errors(r) for r in result.rows)


def test_relations_follow_the_links():
    # A0 <-> B0 mutual (0.9); A1's nearest is B0 (0.8); B1's nearest is A0 (0.75);
    # A2 and B2 have nothing above the threshold.
    near = m.Nearest(
        a_index=torch.tensor([0, 0, 2]), a_sim=torch.tensor([0.9, 0.8, 0.3]),
        b_index=torch.tensor([0, 0, 1]), b_sim=torch.tensor([0.9, 0.75, 0.2]),
    )
    rows = m.relate(near, threshold=0.5)
    got = [(r.a, r.b, r.relation) for r in rows]
    assert got == [(0, [0, 1], "split"), (1, [0], "merge"), (2, [], "gone"), (None, [2], "new")]
    assert rows[0].b_similarity == pytest.approx([0.9, 0.75])
    assert rows[2].nearest == 2 and rows[3].nearest == 1
    # an exact assignment's pair above the threshold is a link too
    pairs = (np.array([0, 2]), np.array([0, 2]), np.array([0.9, 0.6], dtype=np.float32))
    rows = m.relate(near, threshold=0.5, pairs=pairs)
    assert [(r.a, r.b, r.relation) for r in rows] == [(0, [0, 1], "split"), (1, [0], "merge"), (2, [2], "same")]
    # a higher threshold drops the weaker links
    rows = m.relate(near, threshold=0.85)
    assert [(r.a, r.b, r.relation) for r in rows][:3] == [(0, [0], "same"), (1, [], "gone"), (2, [], "gone")]


def test_user_errors_are_typed(monkeypatch):
    a, b = random_sae(d_in=64, d_sae=64), random_sae(d_in=32, d_sae=64)
    with pytest.raises(InputError, match="d_in 64 vs 32"):
        m.match(a, b)
    with pytest.raises(InputError, match="unknown similarity view"):
        m.match(a, a, by=["decoder", "bogus"])
    with pytest.raises(InputError, match="coact view needs a token batch"):
        m.match(a, a, by=["coact"])
    with pytest.raises(InputError, match="threshold"):
        m.match(a, a, threshold=1.5)
    monkeypatch.setattr(m, "EXACT_MAX_ENTRIES", 1000)
    with pytest.raises(InputError, match="too large for exact assignment"):
        m.match(a, a, assignment="exact")
    assert m.match(a, a, assignment="auto").summary.assignment == "mnn"


def test_mapping_file_round_trip_and_schema(tmp_path):
    import jsonschema

    from saekit.schemas import export

    sae = random_sae(d_in=32, d_sae=128)
    other = split_copy(sae, [5], noise=0.2)
    result = m.match(sae, other)
    path = m.write_mapping(result, tmp_path / "map.jsonl")
    assert m.read_mapping(path) == result.rows
    assert m.read_summary(path) == result.summary
    assert m.summary_path(path).name == "map.summary.json"
    # the committed JSON Schema and pydantic agree on every line
    assert export.load_committed("latent_match") == export.json_schema("latent_match")
    validator = jsonschema.Draft202012Validator(export.load_committed("latent_match"))
    for line in path.read_text().splitlines():
        validator.validate(json.loads(line))
    # a bad line is reported with its file and line number
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({**json.loads(lines[3]), "relation": "moved"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArtifactFormatError, match=r"map.jsonl:4: relation"):
        m.read_mapping(path)
    lines[3] = json.dumps({"a": 3, "b": [1, 2], "b_similarity": [0.9], "similarity": 0.9, "relation": "split"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArtifactFormatError, match=r"map.jsonl:4: b_similarity"):
        m.read_mapping(path)


def test_mapping_errors_cover_each_relation():
    ok = LatentMatch(a=1, b=[2, 3], b_similarity=[0.9, 0.8], similarity=0.9, relation="split")
    assert mapping_errors(ok) == []
    bad = [
        LatentMatch(a=1, b=[2], b_similarity=[0.9], similarity=0.9, relation="split"),
        LatentMatch(a=1, b=[2], b_similarity=[0.1], similarity=0.1, relation="gone"),
        LatentMatch(a=1, b=[2], b_similarity=[0.1], similarity=0.1, relation="new"),
        LatentMatch(a=None, b=[2, 3], b_similarity=[0.9, 0.8], similarity=0.9, relation="same"),
        LatentMatch(a=1, b=[2, 2], b_similarity=[0.9, 0.9], similarity=0.9, relation="split"),
    ]
    assert all(mapping_errors(r) for r in bad)
    with pytest.raises(ValueError):
        LatentMatch(a=1, b=[2], b_similarity=[1.5], similarity=0.9, relation="same")


def test_similarity_histogram_counts_every_latent():
    sae, other = random_sae(d_in=32, d_sae=200), random_sae(d_in=32, d_sae=300, seed=5)
    s = m.match(sae, other).summary
    assert sum(s.histogram.counts) == 200 and sum(s.histogram_b.counts) == 300
    assert len(s.histogram.bin_edges) == len(s.histogram.counts) + 1
    assert sum(Counter({k: v for k, v in s.counts.items() if k != "new"}).values()) == 200
    assert np.isclose(s.threshold, 0.7)
