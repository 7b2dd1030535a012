"""``saekit train transcoders`` (TopK transcoders for SmolLM2-135M, registered as one set) and
``saekit release transcoders`` (a checked set as a Hub release).

Heavy imports (torch, transformers, mlflow) happen inside the command, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saekit.cli.app import JSON_OPTION, app, emit, release_app

train_app = typer.Typer(help="Train small SAEs and transcoders on SmolLM2-135M.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("transcoders")
def train_transcoders_cmd(
    name: str = typer.Option(..., "--name", help="Registry name the set is registered under."),
    layers: str = typer.Option("all", "--layers", help="'all' or comma-separated layer indices (e.g. 3,7)."),
    width: int = typer.Option(1152, "--width", min=1, help="Latents per layer (d_sae)."),
    k: int = typer.Option(16, "--k", min=1, help="Active latents per token (TopK)."),
    tokens: int = typer.Option(8192, "--tokens", min=64, help="Training tokens (train split of the corpus)."),
    steps: int = typer.Option(200, "--steps", min=1, help="Adam steps per layer."),
    batch_size: int = typer.Option(512, "--batch-size", min=1, help="Tokens per step."),
    lr: float = typer.Option(2e-3, "--lr", min=0.0, help="Adam learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the token sample and the initialisation."),
    corpus: str = typer.Option("pydoc", "--corpus", help="Training text: pydoc, fortunes, or a .txt file / folder."),
    activation: str = typer.Option("topk", "--activation", help="topk, or relu (continuous; sparsity from --l1)."),
    l1: float = typer.Option(0.1, "--l1", min=0.0, help="relu: weight of the L1 penalty."),
    auxk_alpha: float = typer.Option(0.0, "--auxk-alpha", min=0.0, help="topk: AuxK loss weight (sparsify: 1/32)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias to move onto the version (e.g. candidate)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Train a TopK (or ReLU) transcoder for each MLP (activations streamed one layer at a time), cache the set and register it as one version."""
    from saekit.harness.model import load_lm
    from saekit.harness.transcoder_train import TCTrainConfig, n_blocks, parse_layers, train_transcoders

    chosen = parse_layers(layers, n_blocks(load_lm()[0]))  # a bad layer fails before anything trains
    cfg = TCTrainConfig(width=width, k=k, n_tokens=tokens, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        corpus=corpus, activation=activation, l1_coeff=l1, auxk_alpha=auxk_alpha,
                        layers=None if layers.strip() == "all" else tuple(chosen))
    res = train_transcoders(name, cfg, alias=alias)
    v = res.version
    data = {
        "name": v.name, "version": v.version, "sha256": v.sha256, "folder": str(res.folder), "cached": res.cached,
        "seconds": round(res.seconds, 3), "layers": chosen,
        "train_fvu": {str(f.layer): f.train_fvu for f in res.fits},
        "train_seconds": {str(f.layer): round(f.seconds, 3) for f in res.fits},
    }
    lines = [f"{'read from the cache' if res.cached else 'trained'}: {len(chosen)} layers in {res.seconds:.1f} s "
             f"({res.folder})"]
    lines += [f"  layer {f.layer:>2}: train FVU {f.train_fvu:.4f} ({f.seconds:.1f} s)" for f in res.fits]
    lines.append(f"registered {v.name}/{v.version}  sha256 {v.sha256[:12]}")
    emit(data, json_out, lines)


@release_app.command("transcoders")
def release_transcoders_cmd(
    ref: str = typer.Argument(..., help="The registered transcoder set: NAME/VERSION or NAME@ALIAS."),
    check: Path = typer.Option(..., "--check", help="Its check output folder (saekit check REF --out DIR)."),
    out: Path = typer.Option(..., "--out", "-o", help="Release folder to write (missing or empty)."),
    repo: str = typer.Option(..., "--repo", help="ORG/NAME of the Hub repo the release is for."),
    version: str = typer.Option("1.0.0", "--version", help="Release version (tag v<version>)."),
    set_id: Optional[str] = typer.Option(None, "--set-id", help="Folder of the set in the repo (default: the registry name)."),
    graph: list[Path] = typer.Option([], "--graph", help="A folder `saekit graph` wrote over this set; "
                                      "released under graphs/<slug>/ (repeatable)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Build a transcoder set release: the set (SAELens per-layer folders), circuit-tracer's config.yaml layout, records, cards, model card; publish it with `saekit release publish`."""
    import json as _json

    from saekit.releases.transcoder_release import build_set_release

    path = build_set_release(ref, out, check_dir=check, hub_repo=repo, version=version, set_id=set_id,
                              graphs=graph)
    release = _json.loads((path / "release.json").read_text())
    s = release["sets"][0]
    data = {"bundle": str(path), "release_id": release["release_id"], "tag": release["tag"], "set": s["sae_id"],
            "sha256": s["sha256"], "circuit_tracer": s["circuit_tracer"], "saelens": s["saelens"], "notes": s["notes"],
            "graphs": [g["path"] for g in release.get("graphs", [])]}
    emit(data, json_out, [f"built {release['release_id']} {release['tag']} ({len(s['layers'])} layers) in {path}"]
         + [f"  graph: {g}" for g in data["graphs"]] + [f"  note: {n}" for n in s["notes"]])
