"""Feature cards from a check, annotations merged from a user's file, and card verification.

A card's top examples are exact model inputs: each starts at its context window's first
token (BOS) and ends a few tokens after the maximum, so ``saekit cards verify`` can re-run
the example's ``token_ids`` through the model and the SAE and reproduce every value
without the corpus. ``extra["saekit"]["token_set"]`` holds the token-set config the stats
came from, so the density can be recomputed on the same tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from saekit.harness.activations import spliced
from saekit.harness.text import TokenSet
from saekit.schemas import (
    ActivationExample,
    ActivationStats,
    Annotation,
    CardProvenance,
    DownstreamEval,
    ExampleSource,
    FeatureCard,
    Histogram,
    InputError,
    LogitEffect,
    LogitEffects,
    NotFoundError,
    SAERef,
)
from saekit.schemas.console import Progress
from saekit.schemas.version import __version__

ABLATION_METHOD = (
    "latent ablation in the spliced SAE reconstruction: x_hat - a_i * W_dec[i] at every position where "
    "latent i fires; next-token loss compared with the unablated reconstruction on those positions"
)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def select_latents(fire_count: Any, n: int | str) -> list[int]:
    """The ``n`` most frequently firing latents (ties by lower index), or every latent for 'all'."""
    import torch

    d_sae = fire_count.shape[0]
    if n == "all" or (isinstance(n, int) and n >= d_sae) or n == -1:
        return list(range(d_sae))
    n = int(n)
    order = torch.sort(-fire_count.double(), stable=True).indices
    return [int(i) for i in order[:n] if fire_count[i] > 0]


def _decoder(tokenizer: Any):
    @lru_cache(maxsize=None)
    def tok_str(tid: int) -> str:
        return tokenizer.decode([tid])

    return tok_str


def _entries(values: Any, indices: Any, latents: list[int]) -> dict[int, tuple[Any, Any]]:
    """Per latent: (flat token positions, values) where it fires, sorted by value descending."""
    import torch

    k = values.shape[1]
    pos = torch.arange(values.shape[0]).repeat_interleave(k)
    lat, val = indices.reshape(-1), values.reshape(-1).float()
    keep = (val > 0) & torch.isin(lat, torch.tensor(latents, dtype=lat.dtype))
    pos, lat, val = pos[keep], lat[keep], val[keep]
    # sort by latent, then value descending, then position (stable, deterministic)
    order = torch.sort(pos, stable=True).indices
    pos, lat, val = pos[order], lat[order], val[order]
    order = torch.sort(-val, stable=True).indices
    pos, lat, val = pos[order], lat[order], val[order]
    order = torch.sort(lat, stable=True).indices
    pos, lat, val = pos[order], lat[order], val[order]
    out: dict[int, tuple[Any, Any]] = {}
    uniq, counts = torch.unique_consecutive(lat, return_counts=True)
    start = 0
    for latent, c in zip(uniq.tolist(), counts.tolist()):
        out[latent] = (pos[start : start + c], val[start : start + c])
        start += c
    return out


def _row_values(pos: Any, val: Any, row: int, ctx: int, end: int) -> list[float]:
    out = [0.0] * end
    sel = (pos // ctx) == row
    for p, v in zip(pos[sel].tolist(), val[sel].tolist()):
        if p % ctx < end:
            out[p % ctx] = float(v)
    return out


def _downstream(
    sae: Any, model: Any, tokens: TokenSet, mask: Any, ce_with_sae: Any, latent: int,
    pos: Any, val: Any, *, hook_name: str, max_rows: int, task: str,
) -> DownstreamEval | None:
    """Change in next-token loss when ``latent`` is removed from the spliced reconstruction."""
    import torch

    from saekit.harness.metrics import per_token_ce

    ctx = tokens.context_size
    rows: list[int] = []
    for p in pos.tolist():  # rows in order of their strongest activation
        r = p // ctx
        if r not in rows:
            rows.append(r)
        if len(rows) == max_rows:
            break
    if not rows:
        return None
    w = sae.W_dec[latent].float()
    deltas, base_sum, abl_sum = [], 0.0, 0.0
    for r in rows:
        sel = (pos // ctx) == r
        fire_pos = (pos[sel] % ctx).tolist()
        fire_val = val[sel]
        # positions where the next token exists and the input token is not special
        scored = [p for p in fire_pos if p < ctx - 1 and bool(mask[r, p])]
        if not scored:
            continue
        end = max(scored) + 2  # causal: later tokens do not change these logits
        dev = w.device
        toks = tokens.tokens[r : r + 1, :end].to(dev)
        m = mask[r : r + 1, :end].to(dev)
        a = torch.zeros(end, device=dev)
        for p, v in zip(fire_pos, fire_val.tolist()):
            if p < end:
                a[p] = v

        def ablate(acts: Any, m=m, a=a) -> Any:
            x_hat = sae(acts.reshape(-1, acts.shape[-1])).reshape(acts.shape).to(acts.dtype)
            x_hat = x_hat - a[None, :, None] * w[None, None, :]
            return torch.where(m[..., None], x_hat, acts)

        with torch.inference_mode(), spliced(model, hook_name, ablate):
            logits = model(toks).logits
        ce_abl = per_token_ce(logits, toks)[0].cpu()
        idx = torch.tensor(scored)
        base = ce_with_sae[r, idx].double()
        abl = ce_abl[idx].double()
        deltas.append(abl - base)
        base_sum += float(base.sum())
        abl_sum += float(abl.sum())
    if not deltas:
        return None
    d = torch.cat(deltas)
    n = int(d.numel())
    return DownstreamEval(
        task=task,
        metric="delta_ce_loss",
        value=float(d.mean()),
        method=ABLATION_METHOD,
        n_tokens=n,
        details={
            "hook_name": hook_name,
            "rows": len(rows),
            "ce_loss_with_sae": base_sum / n,
            "ce_loss_latent_ablated": abl_sum / n,
        },
    )


def build_cards(
    sae: Any,
    model: Any,
    tokenizer: Any,
    run: Any,
    tokens: TokenSet,
    *,
    sae_ref: SAERef,
    hook_name: str,
    latents: list[int],
    downstream_latents: Iterable[int] = (),
    n_examples: int = 5,
    right_context: int = 8,
    n_logits: int = 10,
    n_bins: int = 16,
    downstream_rows: int = 4,
) -> list[FeatureCard]:
    """One FeatureCard per latent in ``latents`` from an EvalRun (see saekit.harness.metrics)."""
    import torch

    from saekit.harness.model import unembedding

    ctx = tokens.context_size
    tok_str = _decoder(tokenizer)
    ents = _entries(run.values, run.indices, latents)
    n_tok = run.stats.n_tokens
    fp = tokens.fingerprint
    info = getattr(model, "saekit_info", None)
    prov = CardProvenance(
        tool="saekit",
        tool_version=__version__,
        created_at=now_iso(),
        model=info.id if info else None,
        model_revision=info.revision if info else None,
        hook_name=hook_name,
        dataset=tokens.source,
    )
    extra = {"saekit": {"token_set": tokens.config(), "hook_name": hook_name}}
    W_U = unembedding(model).float()
    down = set(downstream_latents)
    task = f"next-token prediction ({tokens.source}, {tokens.split} split)"
    cards: list[FeatureCard] = []
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0))
    with Progress("feature cards", total=len(latents)) as bar:
        for start in range(0, len(latents), 256):
            chunk = latents[start : start + 256]
            effects = (sae.W_dec[chunk].float() @ W_U).cpu()  # [chunk, vocab]: W_dec[i] . W_U (final norm gain folded)
            top = torch.topk(effects, n_logits, dim=1)
            bot = torch.topk(-effects, n_logits, dim=1)
            for j, latent in enumerate(chunk):
                pos, val = ents.get(latent, empty)
                fires = int(run.stats.fire_count[latent])
                mx = float(run.stats.act_max[latent]) if fires else None
                hist = None
                if fires and mx and mx > 0:
                    counts = torch.histc(val, bins=n_bins, min=0.0, max=mx)
                    edges = torch.linspace(0.0, mx, n_bins + 1)
                    hist = Histogram(bin_edges=[float(e) for e in edges], counts=[float(c) for c in counts])
                stats = ActivationStats(
                    density=fires / max(n_tok, 1),
                    mean=float(run.stats.act_sum[latent]) / fires if fires else None,
                    max=mx,
                    n_tokens=n_tok,
                    histogram=hist,
                    data_fingerprint=fp,
                )
                examples: list[ActivationExample] = []
                seen: set[int] = set()
                for p, v in zip(pos.tolist(), val.tolist()):
                    r, t = divmod(p, ctx)
                    if r in seen:
                        continue
                    seen.add(r)
                    end = min(ctx, t + 1 + right_context)
                    ids = tokens.tokens[r, :end].tolist()
                    examples.append(
                        ActivationExample(
                            tokens=[tok_str(i) for i in ids],
                            values=_row_values(pos, val, r, ctx, end),
                            token_ids=ids,
                            max_value=float(v),
                            max_position=t,
                            source=ExampleSource(
                                dataset=tokens.source,
                                document=tokens.documents[r] if tokens.documents else None,
                                position=tokens.positions[r] if tokens.positions else None,
                            ),
                            bin="top",
                        )
                    )
                    if len(examples) == n_examples:
                        break
                logit = LogitEffects(
                    positive=[LogitEffect(token=tok_str(int(t)), token_id=int(t), value=float(v))
                              for v, t in zip(top.values[j], top.indices[j])],
                    negative=[LogitEffect(token=tok_str(int(t)), token_id=int(t), value=-float(v))
                              for v, t in zip(bot.values[j], bot.indices[j])],
                )
                downstream = []
                if latent in down and run.ce_with_sae is not None and fires:
                    ev = _downstream(sae, model, tokens, run.mask, run.ce_with_sae, latent, pos, val,
                                     hook_name=hook_name, max_rows=downstream_rows, task=task)
                    if ev is not None:
                        downstream.append(ev)
                cards.append(
                    FeatureCard(
                        sae=sae_ref,
                        index=latent,
                        stats=stats,
                        top_examples=examples,
                        logit_effects=logit,
                        downstream=downstream,
                        tags=["dead"] if not fires else [],
                        provenance=prov,
                        extra=extra,
                    )
                )
                bar.update()
    return cards


# --- files -----------------------------------------------------------------------------


def write_cards(cards: list[FeatureCard], path: Path) -> Path:
    """feature_cards.jsonl: one card per line, in index order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for card in sorted(cards, key=lambda c: c.index):
            f.write(card.model_dump_json(exclude_none=True) + "\n")
    tmp.replace(path)
    return path


def read_cards(path: Path) -> list[FeatureCard]:
    """Cards of a .jsonl file (one per line) or a .json file (a card or a list)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such card file", where=str(path))
    text = path.read_text(encoding="utf-8")
    docs: list[tuple[int, Any]] = []
    try:
        if path.suffix == ".json":
            doc = json.loads(text)
            docs = list(enumerate(doc if isinstance(doc, list) else [doc], 1))
        else:
            docs = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON: {err.msg}", where=f"{path}:{err.lineno}") from None
    except RecursionError:  # nesting is bounded by the parser's recursion limit
        raise InputError("JSON nested too deep", where=str(path)) from None
    out = []
    for n, doc in docs:
        try:
            out.append(FeatureCard.model_validate(doc))
        except Exception as err:  # pydantic.ValidationError: one line for the user
            first = str(err).splitlines()
            raise InputError(f"not a feature card ({first[1] if len(first) > 1 else first[0]})", where=f"{path}:{n}") from None
    return out


def read_annotations(path: Path) -> dict[int, list[Annotation]]:
    """Annotations by latent index from a user's file: JSONL (or a JSON list) of
    ``{index, label, description}`` rows, saekit cards, or Neuronpedia features."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such annotation file", where=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows = list(enumerate(json.loads(text), 1))
        else:
            rows = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON: {err.msg}", where=f"{path}:{err.lineno}") from None
    except RecursionError:  # nesting is bounded by the parser's recursion limit
        raise InputError("JSON nested too deep", where=str(path)) from None
    out: dict[int, list[Annotation]] = {}
    for n, doc in rows:
        where = f"{path}:{n}"
        if not isinstance(doc, dict) or not isinstance(doc.get("index"), (int, str)):
            raise InputError("expected an object with an integer 'index'", where=where)
        try:
            if "schema_version" in doc and "sae" in doc:
                anns = FeatureCard.model_validate(doc).annotations
            elif "explanations" in doc or "pos_str" in doc or "modelId" in doc:
                from saekit.schemas.convert import from_neuronpedia

                anns = from_neuronpedia(doc).annotations
            else:
                anns = [
                    Annotation(
                        label=doc.get("label"),
                        description=doc.get("description"),
                        source=doc.get("source", "human"),
                        author=doc.get("author"),
                        explainer_model=doc.get("explainer_model"),
                    )
                ]
            index = int(doc["index"])
        except InputError as err:
            raise InputError(err.message, where=where) from None
        except Exception as err:
            raise InputError(f"bad annotation: {str(err).splitlines()[0]}", where=where) from None
        out.setdefault(index, []).extend(anns)
    return out


def merge_annotations(cards: list[FeatureCard], annotations: dict[int, list[Annotation]]) -> tuple[list[FeatureCard], int]:
    """Cards with the user's annotations added (computed fields untouched; an annotation
    already on the card is not added twice). Returns (cards, number of cards annotated)."""
    out, n = [], 0
    for card in cards:
        new = [a for a in annotations.get(card.index, []) if a not in card.annotations]
        if new:
            card = card.model_copy(update={"annotations": [*card.annotations, *new]})
            n += 1
        out.append(card)
    return out, n


# --- verification ----------------------------------------------------------------------


@dataclass
class CardCheck:
    index: int
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    results: list[CardCheck]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def lying(self) -> list[CardCheck]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_cards": len(self.results),
            "n_lying": len(self.lying),
            "lying": [{"index": r.index, "problems": r.problems} for r in self.lying],
        }


def verify_cards(
    cards: list[FeatureCard],
    sae: Any,
    model: Any,
    tokenizer: Any,
    *,
    density_atol: float = 2e-3,
    density_rtol: float = 0.05,
    value_atol: float = 1e-3,
    value_rtol: float = 1e-3,
    hook_name: str | None = None,
) -> VerifyReport:
    """Re-check each card's claims against the SAE and model: its density (recomputed on the
    token set the card names) and every top example's activations (re-run from token_ids).
    Every card that disagrees is reported with all of its problems."""
    import torch

    from saekit.harness.activations import run_to_hook
    from saekit.harness.text import special_token_ids, token_set

    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    sha = sae.ref.sha256 if sae.ref else None
    results = {c.index: CardCheck(c.index) for c in cards}

    def latent_values(ids: Any, hook: str, *, latent: int | None = None) -> Any:
        """Dense latents [b, ctx, d_sae]; with ``latent``: (its values [ctx], its
        pre-activation [ctx], the k-th largest value per token [ctx]) for the first row."""
        acts = run_to_hook(model, ids, hook)
        flat = acts.reshape(-1, sae.cfg.d_in)
        dense = torch.zeros(flat.shape[0], sae.cfg.d_sae)
        code = sae.encode(flat)
        dense.scatter_(1, code.indices, code.values.float())
        dense[torch.isin(ids.reshape(-1), special)] = 0.0
        if latent is None:
            return dense.reshape(ids.shape[0], ids.shape[1], -1)
        from saekit.kernels.reference import pre_activations

        pre = torch.relu(pre_activations(flat, sae)[:, latent])
        return dense[:, latent], pre, code.values[:, -1].float()

    for c in cards:
        r = results[c.index]
        if c.index >= sae.cfg.d_sae:
            r.problems.append(f"index {c.index} >= d_sae {sae.cfg.d_sae}")
        if sha and c.sae.sha256 and c.sae.sha256 != sha:
            r.problems.append(f"card is for SAE sha256 {c.sae.sha256[:12]}, checked against {sha[:12]}")

    # density: grouped by the token set each card names
    groups: dict[str, list[FeatureCard]] = {}
    for c in cards:
        cfg = (c.extra.get("saekit") or {}).get("token_set")
        if c.stats is not None and cfg and c.index < sae.cfg.d_sae:
            groups.setdefault(json.dumps(cfg, sort_keys=True), []).append(c)
    for key, group in groups.items():
        cfg = json.loads(key)
        hook = hook_name or (group[0].extra.get("saekit") or {}).get("hook_name") or sae.cfg.hook_name
        ts = token_set(tokenizer, **cfg)
        fires = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
        n = 0
        with Progress("verify: density", total=ts.tokens.shape[0]) as bar:
            for i in range(0, ts.tokens.shape[0], 8):
                ids = ts.tokens[i : i + 8]
                fires += (latent_values(ids, hook) > 0).sum((0, 1))
                n += int((~torch.isin(ids, special)).sum())
                bar.update(ids.shape[0])
        for c in group:
            r = results[c.index]
            fp = c.stats.data_fingerprint
            if fp and fp != ts.fingerprint:
                r.problems.append(f"token set fingerprint {ts.fingerprint[:12]} differs from the card's {fp[:12]}")
                continue
            got = float(fires[c.index]) / max(n, 1)
            tol = max(density_atol, density_rtol * c.stats.density)
            r.checked.append("density")
            if abs(got - c.stats.density) > tol:
                r.problems.append(f"density {c.stats.density:.6g} claimed, {got:.6g} measured (tolerance {tol:.2g})")

    # top examples: re-run each example's token ids
    todo = [(c, j, ex) for c in cards for j, ex in enumerate(c.top_examples) if c.index < sae.cfg.d_sae]
    with Progress("verify: examples", total=len(todo)) as bar:
        for c, j, ex in todo:
            r = results[c.index]
            bar.update()
            if not ex.token_ids:
                r.problems.append(f"top_examples[{j}] has no token_ids: cannot be reproduced")
                continue
            hook = hook_name or (c.extra.get("saekit") or {}).get("hook_name") or sae.cfg.hook_name
            vals, pre, kth = latent_values(torch.tensor([ex.token_ids]), hook, latent=c.index)
            claimed = torch.tensor(ex.values, dtype=torch.float32)
            if claimed.shape != vals.shape:
                r.problems.append(f"top_examples[{j}]: {len(ex.values)} values for {len(ex.token_ids)} tokens")
                continue
            tol = value_atol + value_rtol * float(claimed.abs().max())
            diff = (vals - claimed).abs()
            if sae.cfg.architecture in ("topk", "batchtopk"):
                # a latent within tolerance of the k-th largest value may fall in or out of
                # the top k with float noise: either 0 or its pre-activation is then right
                tie = ((pre - kth).abs() <= tol) & ((claimed == 0) | ((claimed - pre).abs() <= tol))
                diff = torch.where(tie, torch.zeros_like(diff), diff)
            r.checked.append(f"top_examples[{j}]")
            if float(diff.max()) > tol:
                at = int(diff.argmax())
                r.problems.append(
                    f"top_examples[{j}]: value {float(claimed[at]):.5g} at token {at} claimed, "
                    f"{float(vals[at]):.5g} reproduced"
                )
            elif ex.max_value is not None and ex.max_position is not None:
                got = float(vals[ex.max_position])
                if abs(got - ex.max_value) > tol:
                    r.problems.append(
                        f"top_examples[{j}]: max_value {ex.max_value:.5g} claimed, {got:.5g} reproduced"
                    )
    return VerifyReport([results[c.index] for c in cards])
