"""Carrying annotations along a mapping (saekit.matching.carry) and the CLI:
``saekit diff`` and ``saekit cards carry`` on artifact folders."""

from __future__ import annotations

import json

import pytest
import torch
from matching_helpers import permuted, random_sae, split_copy

from saekit.matching import latents as m
from saekit.schemas.card_files import read_cards, write_cards
from saekit.schemas import Annotation, FeatureCard, InputError, SAERef

REF_A = SAERef(name="sae-a", version="1", sha256="a" * 64, d_sae=128)
REF_B = SAERef(name="sae-b", version="2", sha256="b" * 64, d_sae=130)


def _cards(ref: SAERef, labels: dict[int, str], source: str = "auto") -> list[FeatureCard]:
    return [FeatureCard(sae=ref, index=i, annotations=[Annotation(label=t, source=source)]) for i, t in labels.items()]


@pytest.fixture(scope="module")
def split_mapping():
    """A (128 latents) against B = A with latents 3 and 9 split (B latents 128, 129 added)."""
    sae = random_sae(d_in=32, d_sae=128)
    return m.match(sae, split_copy(sae, [3, 9], noise=0.2), ref_a=REF_A, ref_b=REF_B)


def test_carry_marks_every_annotation_and_keeps_b_own(split_mapping):
    rows = split_mapping.rows
    cards_a = _cards(REF_A, {1: "commas", 3: "python keywords", 9: "dates"})
    cards_b = _cards(REF_B, {1: "punctuation"}, source="human")
    result = m.carry(cards_a, cards_b, rows)
    by_index = {c.index: c for c in result.cards}
    assert sorted(by_index) == [1, 3, 9, 128, 129]
    # B's own annotation stays first and untouched; A's is appended, marked carried_from
    own, carried = by_index[1].annotations
    assert own == Annotation(label="punctuation", source="human")
    assert carried.label == "commas" and carried.carried_from.sae == REF_A
    assert carried.carried_from.index == 1 and carried.carried_from.similarity > 0.99
    # a split carries the parent's annotation to both children, each with its own similarity
    for parent, child in ((3, 128), (9, 129)):
        sims = {}
        for b in (parent, child):
            (ann,) = by_index[b].annotations
            assert ann.label == cards_a[[c.index for c in cards_a].index(parent)].annotations[0].label
            assert ann.carried_from.index == parent and by_index[b].sae == REF_B
            sims[b] = ann.carried_from.similarity
        row = next(r for r in rows if r.a == parent)
        assert sims == pytest.approx(dict(zip(row.b, row.b_similarity)))
    assert (result.carried, result.latents, result.created) == (5, 5, 4)
    # carrying again adds nothing
    again = m.carry(cards_a, result.cards, rows)
    assert again.carried == 0 and again.skipped_existing == 5 and again.cards == result.cards


def test_carry_filters(split_mapping):
    rows = split_mapping.rows
    cards_a = _cards(REF_A, {1: "commas", 3: "python keywords"})
    cards_b = _cards(REF_B, {1: "punctuation"})
    only_same = m.carry(cards_a, cards_b, rows, relations=["same"])
    assert only_same.carried == 1
    existing = m.carry(cards_a, cards_b, rows, create_missing=False)
    assert [c.index for c in existing.cards] == [1] and existing.carried == 1
    strict = m.carry(cards_a, cards_b, rows, min_similarity=0.999)
    assert strict.carried == 1  # the split children sit below 0.999
    with pytest.raises(InputError, match="cannot carry along"):
        m.carry(cards_a, cards_b, rows, relations=["gone"])
    with pytest.raises(InputError, match="SAE reference"):
        m.carry(cards_a, [], rows)
    with pytest.raises(InputError, match="two cards for latent 1"):
        m.carry(cards_a + cards_a[:1], cards_b, rows)


def test_carry_refuses_a_mapping_of_other_saes(split_mapping):
    other = SAERef(name="sae-a", sha256="c" * 64, d_sae=128)
    with pytest.raises(InputError, match="mapping was computed for SAE A"):
        m.check_mapping_fits(split_mapping.summary, _cards(other, {1: "x"}), _cards(REF_B, {1: "y"}))
    m.check_mapping_fits(split_mapping.summary, _cards(REF_A, {1: "x"}), _cards(REF_B, {1: "y"}))


# --- CLI ------------------------------------------------------------------------------------


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from saekit.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as err:
        code = err.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_diff_and_carry_on_artifact_folders(tmp_path, capsys):
    from saekit.registry.artifact import save_artifact

    sae = random_sae(d_in=32, d_sae=96)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(1))
    folder_a, folder_b = tmp_path / "sae-a", tmp_path / "sae-b"
    sha_a = save_artifact(sae, folder_a)
    sha_b = save_artifact(permuted(sae, perm), folder_b)

    code, out, err = _cli(["diff", str(folder_a), str(folder_b), "--out", str(tmp_path / "map.jsonl"), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["counts"]["same"] == 96 and summary["sae_a"]["sha256"] == sha_a
    assert summary["sae_b"]["sha256"] == sha_b and summary["mapping"] == str(tmp_path / "map.jsonl")
    rows = m.read_mapping(tmp_path / "map.jsonl")
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(96)
    assert [r.b[0] for r in rows] == inv.tolist()

    code, out, _ = _cli(["diff", str(folder_a), str(folder_b), "--by", "decoder,encoder"], capsys)
    assert code == 0 and "same" in out and "96" in out

    ref_a = SAERef(name="sae-a", sha256=sha_a, d_sae=96)
    ref_b = SAERef(name="sae-b", sha256=sha_b, d_sae=96)
    write_cards(_cards(ref_a, {0: "alpha", 5: "beta"}), tmp_path / "a.jsonl")
    write_cards(_cards(ref_b, {int(inv[0]): "own"}, source="human"), tmp_path / "b.jsonl")
    code, out, err = _cli(
        ["cards", "carry", "--from", str(tmp_path / "a.jsonl"), "--to", str(tmp_path / "b.jsonl"),
         "--mapping", str(tmp_path / "map.jsonl"), "--json"],
        capsys,
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["carried"] == 2 and report["created"] == 1
    carried = {c.index: c for c in read_cards(tmp_path / "b.carried.jsonl")}
    assert [a.label for a in carried[int(inv[0])].annotations] == ["own", "alpha"]
    assert carried[int(inv[5])].annotations[0].carried_from.sae.sha256 == sha_a

    # without --mapping, two artifact folders with cards are matched on the spot
    (folder_a / "feature_cards.jsonl").write_text((tmp_path / "a.jsonl").read_text())
    (folder_b / "feature_cards.jsonl").write_text((tmp_path / "b.jsonl").read_text())
    code, out, err = _cli(
        ["cards", "carry", "--from", str(folder_a), "--to", str(folder_b), "--out", str(tmp_path / "c.jsonl"), "--json"],
        capsys,
    )
    assert code == 0, err
    assert read_cards(tmp_path / "c.jsonl") == read_cards(tmp_path / "b.carried.jsonl")

    # a mapping made for other SAEs is refused with one line, exit 2
    write_cards(_cards(SAERef(name="x", sha256="c" * 64, d_sae=96), {0: "z"}), tmp_path / "x.jsonl")
    code, out, err = _cli(
        ["cards", "carry", "--from", str(tmp_path / "x.jsonl"), "--to", str(tmp_path / "b.jsonl"),
         "--mapping", str(tmp_path / "map.jsonl")],
        capsys,
    )
    assert code == 2 and "mapping was computed for SAE A" in err and "Traceback" not in err


def test_cli_diff_user_errors(tmp_path, capsys):
    from saekit.registry.artifact import save_artifact

    save_artifact(random_sae(d_in=32, d_sae=64), tmp_path / "a")
    save_artifact(random_sae(d_in=16, d_sae=64), tmp_path / "b")
    code, _, err = _cli(["diff", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code == 2 and "d_in 32 vs 16" in err
    code, _, err = _cli(["diff", str(tmp_path / "a"), str(tmp_path / "a"), "--by", "coact"], capsys)
    assert code == 2 and "--acts" in err


def test_cli_diff_coact_reads_an_activation_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from saekit.registry.artifact import save_artifact

    sae = random_sae(d_in=32, d_sae=64)
    save_artifact(sae, tmp_path / "a")
    save_artifact(split_copy(sae, [2]), tmp_path / "b")
    save_file({"activations": torch.randn(4, 64, 32)}, str(tmp_path / "acts.safetensors"))
    code, out, err = _cli(
        ["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--by", "decoder,coact", "--acts",
         str(tmp_path / "acts.safetensors"), "--n-tokens", "200", "--json"],
        capsys,
    )
    assert code == 0, err
    s = json.loads(out)
    assert s["n_tokens"] == 200 and s["by"] == ["decoder", "coact"]
    assert s["counts"]["split"] == 1 and s["counts"]["same"] == 63


def test_cli_diff_and_carry_by_registry_reference(tmp_path, capsys):
    """References: the SAEs and the cards of their last check come from the registry."""
    from saekit.registry import store

    sae = random_sae(d_in=32, d_sae=64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    va = store.register("match-a", sae)
    vb = store.register("match-b", permuted(sae, perm))
    ref_a = SAERef(name="match-a", version=str(va.version), sha256=va.sha256, d_sae=64)
    ref_b = SAERef(name="match-b", version=str(vb.version), sha256=vb.sha256, d_sae=64)
    for ref, labels, name in ((ref_a, {int(perm[0]): "alpha"}, "a"), (ref_b, {7: "own"}, "b")):
        folder = tmp_path / name
        folder.mkdir()
        write_cards(_cards(ref, labels), folder / "feature_cards.jsonl")
        store.log_check(ref.name, int(ref.version), metrics={}, files=[folder / "feature_cards.jsonl"], tags={})

    code, out, err = _cli(["diff", "match-a/1", "match-b/1", "--json"], capsys)
    assert code == 0, err
    s = json.loads(out)
    assert s["sae_a"] == ref_a.model_dump() and s["counts"]["same"] == 64

    code, out, err = _cli(
        ["cards", "carry", "--from", "match-a/1", "--to", "match-b/1", "--out", str(tmp_path / "carried.jsonl"), "--json"],
        capsys,
    )
    assert code == 0, err
    (card,) = [c for c in read_cards(tmp_path / "carried.jsonl") if c.index == 0]
    assert card.annotations[0].label == "alpha" and card.annotations[0].carried_from.sae == ref_a

    # a version without a logged check: nothing to carry from, but cards can be carried onto it
    vc = store.register("match-b", permuted(sae, perm.flip(0)))
    code, _, err = _cli(["cards", "carry", "--from", "match-b/2", "--to", "match-a/1"], capsys)
    assert code == 2 and "no feature_cards.jsonl logged" in err
    code, out, err = _cli(
        ["cards", "carry", "--from", "match-a/1", "--to", "match-b/2", "--out", str(tmp_path / "new.jsonl"), "--json"],
        capsys,
    )
    assert code == 0, err
    (card,) = read_cards(tmp_path / "new.jsonl")
    assert card.sae.sha256 == vc.sha256 and card.annotations[0].label == "alpha"


def test_cli_diff_coact_defaults_to_the_language_model(tmp_path, capsys, monkeypatch):
    """Without --acts the batch comes from the SAEs' own model and hook (lm_activations;
    replaced here, the real one loads SmolLM2 and is exercised by the harness' tests)."""
    from saekit.registry.artifact import save_artifact

    calls = []

    def fake_lm_activations(sae, n_tokens, **_):
        calls.append((sae.cfg.hook_name, n_tokens))
        return torch.randn(n_tokens, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(m, "lm_activations", fake_lm_activations)
    sae = random_sae(d_in=32, d_sae=64)
    hooked = sae.cfg.model_copy(update={"hook_name": "model.layers.6", "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    a = type(sae)(hooked, sae.tensors)
    save_artifact(a, tmp_path / "a")
    save_artifact(permuted(a, torch.arange(63, -1, -1)), tmp_path / "b")
    code, out, err = _cli(["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--by", "coact,decoder", "--n-tokens", "300", "--json"], capsys)
    assert code == 0, err
    assert calls == [("model.layers.6", 300)] and json.loads(out)["counts"]["same"] == 64

    other = type(sae)(hooked.model_copy(update={"hook_name": "model.layers.9"}), sae.tensors)
    save_artifact(other, tmp_path / "c")
    code, _, err = _cli(["diff", str(tmp_path / "a"), str(tmp_path / "c"), "--by", "coact"], capsys)
    assert code == 2 and "different models or hooks" in err
