"""The bundle's README.md: a Hugging Face model card with YAML front matter.

Front matter keys follow the Hub's model card spec (huggingface_hub ``ModelCardData``:
license, library_name, tags, base_model, model-index); ``model-index`` carries one
result per SAE with its headline metrics, so the Hub shows them as evaluation results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saekit.schemas import BenchmarkRecord, ReleaseManifest

# Headline metrics in the order the table shows them (SAELens / SAEBench names).
HEADLINE = (
    "explained_variance",
    "mse",
    "cossim",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "ce_loss_score",
    "kl_div_score",
)


@dataclass
class SAEEntry:
    """One SAE of a built release, as the card and release.json see it."""

    sae_id: str
    ref: str
    name: str
    version: int
    sha256: str
    cfg: dict[str, Any]
    record: BenchmarkRecord | None
    gate: str
    n_cards: int = 0
    card_files: list[str] = field(default_factory=list)
    # the cards' explanations and scores (saekit.releases.annotations): latents explained,
    # latents whose explanation failed, and score_means' rows
    explained: int = 0
    explain_failed: int = 0
    score_means: list[dict[str, Any]] = field(default_factory=list)


def metrics_of(record: BenchmarkRecord | None) -> dict[str, float]:
    """Every metric of a record, flattened (first category wins on a name clash)."""
    out: dict[str, float] = {}
    if record is None:
        return out
    for cat in sorted(record.eval_result_metrics):
        for k, v in sorted(record.eval_result_metrics[cat].items()):
            out.setdefault(k, v)
    return out


def _headline(record: BenchmarkRecord | None) -> list[tuple[str, float]]:
    m = metrics_of(record)
    names = [k for k in HEADLINE if k in m] or sorted(m)[:6]
    return [(k, m[k]) for k in names]


def front_matter(manifest: ReleaseManifest, saes: list[SAEEntry]) -> dict[str, Any]:
    tags = ["saekit", "saelens", "sparse-autoencoder", "interpretability"]
    tags += [t for t in manifest.tags if t not in tags]
    results = []
    for s in saes:
        metrics = [
            {"type": k, "value": float(f"{v:.6g}"), "name": f"{k} ({s.sae_id})"} for k, v in _headline(s.record)
        ]
        if not metrics:
            continue
        data = s.record.data if s.record is not None else None
        results.append(
            {
                "task": {"type": "sae-reconstruction", "name": f"SAE reconstruction: {s.sae_id}"},
                "dataset": {
                    "name": (data.source if data else "unspecified"),
                    "type": (data.source if data else "unspecified"),
                    **({"config": f"{data.n_tokens} tokens"} if data else {}),
                },
                "metrics": metrics,
                "source": {"name": "saekit check", "url": f"https://huggingface.co/{manifest.hub_repo}/blob/main/{s.sae_id}/eval.json"},
            }
        )
    # library_name: the Hub's library registry (huggingface.js model-libraries.ts) has
    # "saelens", which gives the repo SAELens' "Use this model" snippet and its filter;
    # "saekit" is not a registered library, so it stays a tag.
    fm: dict[str, Any] = {
        "license": manifest.license,
        "library_name": "saelens",
        "tags": tags,
        "base_model": manifest.base_model.id,
    }
    if results:
        fm["model-index"] = [{"name": manifest.release_id, "results": results}]
    return fm


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _explanations(saes: list[SAEEntry]) -> list[str]:
    """The explanations section: latents explained, and each scorer's mean against its control
    (the same scorer given another latent's explanation): an explanation is worth what it beats
    the control by."""
    shown = [s for s in saes if s.explained or s.explain_failed]
    if not shown:
        return []
    lines = ["## Explanations", ""]
    for s in shown:
        lines.append(f"- `{s.sae_id}`: {s.explained} of {s.n_cards} latents explained"
                     + (f", {s.explain_failed} failed" if s.explain_failed else "") + ".")
    lines.append("")
    rows = [(s.sae_id, m) for s in shown for m in s.score_means]
    if rows:
        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        lines += ["Scores of the explanations, each beside its control (the same scorer given another latent's "
                  "explanation); a latent failed when none of its windows got an answer that parsed:", "",
                  "| sae_id | scorer | metric | mean | mean control | chance | latents scored | latents failed |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| `{sid}` | {m['scorer']} | {m['metric']} | {num(m['mean'])} | {num(m['mean_control'])} | "
                  f"{num(m['chance'])} | {m['n_scored']} | {m['n_failed']} |" for sid, m in rows]
        lines.append("")
    return lines


def render(manifest: ReleaseManifest, saes: list[SAEEntry], *, plots: list[tuple[str, str]]) -> str:
    """README.md text; deterministic for the same inputs."""
    import yaml

    repo = manifest.hub_repo
    tag = f"v{manifest.version}"
    lines = ["---", yaml.safe_dump(front_matter(manifest, saes), sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {manifest.release_id} {tag}", ""]
    if manifest.description:
        lines += [manifest.description.strip(), ""]
    rev = f" (revision `{manifest.base_model.revision}`)" if manifest.base_model.revision else ""
    lines += [
        f"Sparse autoencoders trained on activations of [{manifest.base_model.id}](https://huggingface.co/{manifest.base_model.id}){rev}, "
        "released with [saekit](https://github.com/saekit/saekit): every artifact is pinned by sha256 "
        "(see `SHA256SUMS` and `release.json`), every SAE passed the release gate below, and each folder "
        "carries the benchmark record that reproduces its numbers.",
        "",
    ]
    # the weights the checks ran (the records' model.weights), e.g. a de-quantized GGUF
    weights = sorted({s.record.model.weights for s in saes
                      if s.record is not None and s.record.model is not None and s.record.model.weights})
    if weights:
        lines += ["Checked on the weights " + "; ".join(f"**{w}**" for w in weights) + ".", ""]
    lines += ["## SAEs", ""]
    metric_names: list[str] = []
    for s in saes:
        for k, _ in _headline(s.record):
            if k not in metric_names:
                metric_names.append(k)
    head = ["sae_id", "architecture", "d_in", "d_sae", "k", "hook"] + metric_names + ["gate", "sha256"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for s in saes:
        m = metrics_of(s.record)
        meta = s.cfg.get("metadata") or {}
        row = [
            f"[`{s.sae_id}`](./{s.sae_id})",
            str(s.cfg.get("architecture", "")),
            str(s.cfg.get("d_in", "")),
            str(s.cfg.get("d_sae", "")),
            str(s.cfg.get("k", "-")),
            f"`{meta.get('hook_name', '')}`",
        ]
        row += [_fmt(m[k]) if k in m else "-" for k in metric_names]
        row += [s.gate, f"`{s.sha256[:12]}`"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if manifest.gate.rules:
        lines += ["Release gate: " + ", ".join(f"`{r}`" for r in manifest.gate.rules) + ".", ""]
    lines += _explanations(saes)
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots:
            lines += [f"![{title}]({path})", ""]
    first = saes[0].sae_id
    lines += [
        "## Load",
        "",
        "With saekit (verifies every file against `SHA256SUMS` and the artifact sha256):",
        "",
        "```python",
        "import saekit",
        "",
    ]
    lines += [f'sae = saekit.load("hf://{repo}@{tag}/{s.sae_id}")' for s in saes]
    lines += [
        "codes = sae.encode(activations)  # activations: [n, d_in] at the hook named in cfg.json",
        "```",
        "",
        "With [SAELens](https://github.com/decoderesearch/SAELens) (each folder is a SAELens v6 `cfg.json` + "
        "`sae_weights.safetensors`; `release` is this repo id, `sae_id` the folder):",
        "",
        "```python",
        "from sae_lens import SAE",
        "",
        f'sae = SAE.from_pretrained(release="{repo}", sae_id="{first}")',
        "```",
        "",
        "`pretrained_saes.yaml` in this repo is the release as a SAELens registry entry; added to SAELens' "
        f"`pretrained_saes.yaml` it loads as `SAE.from_pretrained(release=\"{manifest.release_id}\", "
        f"sae_id=\"{first}\")`. SAELens downloads from the repo's default branch: that load is not pinned "
        f"to `{tag}` (saekit's `hf://` reference above is).",
        "",
        "## Files",
        "",
        "| path | what |",
        "|---|---|",
        "| `<sae_id>/cfg.json`, `<sae_id>/sae_weights.safetensors` | the canonical artifact (SAELens v6 layout + a `saekit` block) |",
        "| `<sae_id>/feature_cards.jsonl` (or `feature_cards/*.jsonl.gz` shards) | one saekit FeatureCard per latent |",
        "| `<sae_id>/eval.json` | the BenchmarkRecord (SAEBench `BaseEvalOutput` fields) the numbers above come from |",
        "| `release.json` | manifest, pinned registry versions, benchmark records, file hashes |",
        "| `pretrained_saes.yaml` | this release as a SAELens registry entry (repo_id, path, l0, variance_explained) |",
        "| `SHA256SUMS` | sha256 of every file in this repo (`sha256sum -c SHA256SUMS`) |",
        "| `browser/index.html` | a static feature browser: download and open it, no server needed |",
        "",
        "## Provenance",
        "",
    ]
    for s in saes:
        rec = s.record
        bits = [f"registry `{s.name}` version {s.version}", f"artifact sha256 `{s.sha256}`"]
        if rec is not None:
            bits.append(f"eval `{rec.eval_id}`")
            if rec.data is not None:
                bits.append(f"{rec.data.n_tokens} tokens of `{rec.data.source}` (fingerprint `{rec.data.fingerprint[:12]}`)")
        lines.append(f"- `{s.sae_id}`: " + "; ".join(bits) + ".")
    lines += ["", f"License: {manifest.license}.", ""]
    return "\n".join(lines)
