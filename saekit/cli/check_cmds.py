"""``saekit check`` and ``saekit cards verify`` / ``saekit cards annotate`` (harness commands).

Heavy imports (torch, transformers, mlflow) happen inside the commands, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saekit.cli.app import JSON_OPTION, app, cards_app, emit
from saekit.schemas.benchmark import (
    DEFAULT_ABLATION_WINDOWS,
    DEFAULT_BATCH,
    DEFAULT_CARDS,
    DEFAULT_CONTEXT,
    DEFAULT_DOWNSTREAM,
    DEFAULT_NEGATIVE_EXAMPLES,
    DEFAULT_QUANTILE_EXAMPLES,
    DEFAULT_TOKENS,
)


@app.command("check")
def check_cmd(
    ref: Optional[str] = typer.Argument(None, help="SAE: registry reference, hf://..., or artifact folder."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Gate policy (YAML/JSON): rules like 'explained_variance >= 0.7'."),
    tokens: Optional[int] = typer.Option(None, "--tokens", min=1, help=f"Tokens to evaluate on (held-out split; default {DEFAULT_TOKENS}, 2048 for a transcoder set)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    model: Optional[str] = typer.Option(None, "--model", help="Language model ID[@REV] (Hub id, TransformerLens alias such as gpt2-small, or a folder); default the SAE's."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or float64 (default: the SAE's dtype)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for eval.json and feature_cards.jsonl."),
    seed: int = typer.Option(0, "--seed", help="Seed of the token-window sample."),
    context: int = typer.Option(DEFAULT_CONTEXT, "--context", min=2, help="Context length (tokens per window, BOS included)."),
    batch_size: int = typer.Option(DEFAULT_BATCH, "--batch-size", min=1, help="Windows per forward pass."),
    corpus: Optional[str] = typer.Option(
        None, "--dataset", "--corpus",
        help="hf://datasets/ORG/NAME[@REV], a .txt/.jsonl/.parquet file or folder, or 'pydoc' (CPython's docs); "
             "default the SAE's dataset_path, else pydoc."),
    cards: bool = typer.Option(True, "--cards/--no-cards", help="Build feature cards."),
    cards_latents: str = typer.Option(DEFAULT_CARDS, "--cards-latents", help="Cards for every latent ('all'), or the N most active."),
    downstream_latents: Optional[str] = typer.Option(
        None, "--downstream-latents",
        help=f"Exact ablation for the N most active latents, or 'all' (default {DEFAULT_DOWNSTREAM}, at most half the "
             "token set's windows; every card carries the attribution estimate)."),
    ablation_windows: int = typer.Option(
        DEFAULT_ABLATION_WINDOWS, "--ablation-windows", min=1,
        help="Strongest windows each of those latents is ablated in (the agreement with attribution compares both there)."),
    quantile_examples: Optional[int] = typer.Option(
        None, "--quantile-examples", min=0, help=f"Examples at activation quantiles per card (default {DEFAULT_QUANTILE_EXAMPLES})."),
    negative_examples: Optional[int] = typer.Option(
        None, "--negative-examples", min=0,
        help=f"Windows where the latent is zero throughout, per card, for scoring explanations (default {DEFAULT_NEGATIVE_EXAMPLES})."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads (default: CPUs this process may use, shared among torchrun ranks)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Merge labels: JSONL {index,label,description}, cards or Neuronpedia."),
    log: bool = typer.Option(True, "--log/--no-log", help="Log metrics, files and gate tags on the registry version."),
    from_record: Optional[Path] = typer.Option(None, "--from-record", help="Re-run the check_config of an eval.json (REF, --device, --threads and the cards options given here apply)."),
    activations: Optional[Path] = typer.Option(None, "--activations", help="Stored activation shards instead of the model (no CE/KL, no cards)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Check an SAE against a real language model: metrics, cards, record, gate (exit 1 if it fails)."""
    import saekit
    from saekit.harness.check import check
    from saekit.harness.transcoder_check import check_ref

    res = check_ref(  # a transcoder set goes to the set check (saekit.harness.transcoder_check)
        ref, saekit.load, check, policy=policy, n_tokens=tokens, device=device, seed=seed, out_dir=out, cards=cards, log=log,
        context_size=context, batch_size=batch_size, corpus=corpus, cards_latents=cards_latents,
        downstream_latents=downstream_latents, ablation_windows=ablation_windows, n_quantile_examples=quantile_examples,
        n_negative_examples=negative_examples, annotations=annotations, from_record=from_record, activations=activations,
        threads=threads, model_id=model, dtype=dtype,
    )
    if getattr(res, "rank", 0) != 0:  # torchrun: rank 0 reports
        return
    emit(res.summary(), json_out, res.describe())
    if not res.ok:
        raise typer.Exit(1)


@cards_app.command("verify")
def verify_cmd(
    cards_file: Path = typer.Argument(..., help="feature_cards.jsonl, .jsonl.gz, .json, or a folder of shards to re-check."),
    sae: str = typer.Option(..., "--sae", help="The SAE the cards claim to describe (reference or folder)."),
    density_tol: float = typer.Option(2e-3, "--density-tol", help="Absolute density tolerance (or 5% relative)."),
    value_tol: float = typer.Option(1e-3, "--value-tol", help="Activation tolerance (absolute + relative to the max)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Re-check every number the cards state (stats, histogram, examples, logit effects, downstream effects) and name the field that lies (exit 1 if any lies)."""
    import saekit

    report = saekit.verify_cards(cards_file, sae, density_tol=density_tol, value_tol=value_tol)
    lines = [f"card {r.index}: " + "; ".join(r.problems) for r in report.lying]
    n = len(report.results)
    lines.append(f"{'ok' if report.ok else 'FAIL'}: {n - len(report.lying)}/{n} cards hold")
    emit(report.to_dict(), json_out, lines)
    if not report.ok:
        raise typer.Exit(1)


@cards_app.command("annotate")
def annotate_cmd(
    cards_file: Path = typer.Argument(..., help="feature_cards.jsonl to add annotations to."),
    annotations: Path = typer.Option(..., "--annotations", help="JSONL {index,label,description}, cards or Neuronpedia features."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: rewrite CARDS_FILE)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Merge a user's annotations into computed cards without touching their computed fields."""
    from saekit.harness.card_ops import annotate_file

    res = annotate_file(cards_file, annotations, out=out)
    emit({"cards": res.cards, "annotated": res.annotated, "path": str(res.path)}, json_out,
         f"annotated {res.annotated} of {res.cards} cards: {res.path}")
