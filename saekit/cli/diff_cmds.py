"""saekit diff REF_A REF_B | saekit cards carry: feature matching across SAE versions and widths.

The work lives in saekit.matching (the algorithm, mapping files, carrying) and
saekit.matching.inputs (activation batches, cards by reference, carry_files); this module parses options,
loads the SAEs by reference (saekit.load) and prints. torch loads only inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from saekit.cli.app import JSON_OPTION, app, cards_app, emit
from saekit.schemas import safeio

if TYPE_CHECKING:
    from saekit.kernels import SAE
    from saekit.schemas import SAERef

def _load_sae(text: str) -> tuple[SAE, SAERef]:
    """An SAE by reference (saekit.load: registry, hf:// or folder) and the SAERef naming it."""
    import saekit
    from saekit.schemas import SAERef

    sae = saekit.load(text)
    return sae, sae.ref or SAERef(name=text, d_sae=sae.cfg.d_sae)


def _relation_bars(counts: dict[str, int], hist: Any) -> list[str]:
    lines = ["relation  count"]
    lines += [f"{rel:<8}  {n}" for rel, n in counts.items()]
    total = sum(hist.counts) or 1.0
    lines.append("best similarity of each A latent:")
    width = 40
    last = len(hist.counts) - 1
    for i, (lo, hi, c) in enumerate(zip(hist.bin_edges, hist.bin_edges[1:], hist.counts)):
        if c:
            close = "]" if i == last else ")"
            lines.append(f"  [{lo:5.2f}, {hi:4.2f}{close}  {int(c):>7}  {'#' * max(1, round(width * c / total))}")
    return lines


@app.command("diff")
def diff(
    ref_a: str = typer.Argument(..., help="SAE A (registry reference, hf://..., or artifact folder)."),
    ref_b: str = typer.Argument(..., help="SAE B, read in the same activation space as A."),
    by: str = typer.Option(
        "decoder", "--by", help="Similarity: comma list of decoder, encoder, coact (mean of their cosines)."
    ),
    threshold: float = typer.Option(0.7, "--threshold", help="Minimum similarity of a link (same/split/merge)."),
    assignment: str = typer.Option(
        "mnn", "--assignment", help="One-to-one pairs: mnn (mutual nearest neighbours), exact, or auto."
    ),
    acts: Optional[Path] = typer.Option(
        None, "--acts", help="Token batch for --by coact: safetensors with 'activations' [..., d_in] "
        "(default: the SAEs' language model and hook on the harness' eval text)."
    ),
    n_tokens: int = typer.Option(4096, "--n-tokens", min=1, help="Tokens of the coact batch."),
    block: int = typer.Option(4096, "--block", min=64, help="Tile size of the blocked similarity."),
    precision: str = typer.Option(
        "float32", "--precision", help="float32, or bfloat16 for faster ranking (similarities stay fp32)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Write the mapping (JSONL) here, and its summary beside it (.summary.json)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Match the latents of two SAEs: same / split / merge / new / gone, with similarities."""
    from saekit.matching import match, summary_path, write_mapping
    from saekit.matching.inputs import coact_batch

    views = [v.strip() for v in by.split(",") if v.strip()]
    if out is not None:  # a link planted at --out fails now, not after the matching
        safeio.check_writable(out, summary_path(out))
    sae_a, sae_ref_a = _load_sae(ref_a)
    sae_b, sae_ref_b = _load_sae(ref_b)
    batch = coact_batch(sae_a, sae_b, n_tokens, acts) if "coact" in views else None
    result = match(
        sae_a, sae_b, by=views, acts=batch, threshold=threshold, assignment=assignment,  # type: ignore[arg-type]
        block=block, precision=precision, ref_a=sae_ref_a, ref_b=sae_ref_b,  # type: ignore[arg-type]
    )
    data: dict[str, Any] = result.summary.model_dump(mode="json")
    text = [
        f"{sae_ref_a.name} ({sae_a.cfg.d_sae}) -> {sae_ref_b.name} ({sae_b.cfg.d_sae}), by {'+'.join(views)}, "
        f"threshold {threshold:g}, {result.summary.assignment}, {result.summary.seconds:.1f}s",
        *_relation_bars(result.summary.counts, result.summary.histogram),
    ]
    if out is not None:
        write_mapping(result, out)
        data["mapping"] = str(out)
        data["summary"] = str(summary_path(out))
        text.append(f"wrote {out} ({len(result.rows)} lines) and {summary_path(out)}")
    emit(data, json_out, text)


@cards_app.command("carry")
def carry_cmd(
    from_: str = typer.Option(..., "--from", help="A's cards: a JSONL file, an artifact folder, or a reference."),
    to: str = typer.Option(
        ..., "--to", help="B's cards: a JSONL file, or an artifact folder or reference (its cards, if any)."
    ),
    mapping: Optional[Path] = typer.Option(
        None, "--mapping", help="Mapping from saekit diff A B --out (default: match the two SAEs now)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Where B's cards go (default: <B cards>.carried.jsonl, or feature_cards.carried.jsonl)."
    ),
    relations: str = typer.Option("same,split,merge", "--relations", help="Relations to carry along."),
    min_similarity: Optional[float] = typer.Option(None, "--min-similarity", help="Skip links below this."),
    create_missing: bool = typer.Option(
        True, "--create-missing/--only-existing", help="Create a card for a matched B latent that has none."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Carry annotations from A's cards onto B's matched latents (marked carried_from)."""
    import saekit
    from saekit.matching.inputs import carry_files

    done = carry_files(
        from_, to, loader=saekit.load, mapping=mapping, out=out,
        relations=[r.strip() for r in relations.split(",") if r.strip()],
        min_similarity=min_similarity, create_missing=create_missing,
    )
    result, out = done.result, done.out
    data = {
        "out": str(out), "carried": result.carried, "latents": result.latents,
        "created": result.created, "skipped_existing": result.skipped_existing, "cards": len(result.cards),
    }
    emit(
        data, json_out,
        f"carried {result.carried} annotation(s) onto {result.latents} latent(s) of B "
        f"({result.created} new card(s), {result.skipped_existing} already present); wrote {out}",
    )
