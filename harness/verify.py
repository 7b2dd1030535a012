"""Card verification: every number a card states, re-measured against the SAE and model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from saekit.harness.activations import run_to_hook
from saekit.harness.datasets import token_set
from saekit.harness.downstream import ABLATION, ATTRIBUTION, exact_ablations
from saekit.harness.latent_stats import GRID, N_GRID
from saekit.harness.model import unembedding
from saekit.harness.sweep import sweep
from saekit.harness.text import special_token_ids
from saekit.schemas import FeatureCard
from saekit.schemas.card import citation_errors
from saekit.schemas.console import Progress


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


@dataclass(frozen=True)
class Tolerances:
    """How far a re-measured number may be from the card's (see verify_cards)."""

    density_atol: float = 2e-3
    density_rtol: float = 0.05
    value_atol: float = 1e-3
    value_rtol: float = 1e-3
    count_tol: float = 0.01
    attribution_tol: float = 0.05
    ablation_tol: float = 0.1

    def close(self, claimed: float, got: float, atol: float | None = None, rtol: float | None = None) -> bool:
        atol = self.value_atol if atol is None else atol
        rtol = self.value_rtol if rtol is None else rtol
        return abs(claimed - got) <= atol + rtol * max(abs(claimed), abs(got))


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
    count_tol: float = 0.01,
    attribution_tol: float = 0.05,
    ablation_tol: float = 0.1,
    hook_name: str | None = None,
) -> VerifyReport:
    """Re-check every number each card states against the SAE and model, and name the
    field that disagrees: stats (density, mean, max, n_tokens, histogram) and the downstream
    effects, recomputed in one sweep over the token set the card names; every top
    and quantile example (re-run from its token_ids, and the best top example must reach the
    recomputed max); logit effects (W_dec[i] @ W_U: each listed value, and that no unlisted
    token beats the listed ones). Tolerances: values ``value_atol + value_rtol * |v|``,
    histogram counts ``count_tol`` of the latent's firing tokens (at least 1), attribution
    ``attribution_tol`` relative (it is recomputed by the same sweep), exact ablation
    ``ablation_tol`` relative (windows are re-run in other batches)."""
    import torch

    tol = Tolerances(density_atol, density_rtol, value_atol, value_rtol, count_tol, attribution_tol, ablation_tol)
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    sha = sae.ref.sha256 if sae.ref else None
    results = {c.index: CardCheck(c.index) for c in cards}
    d_sae = sae.cfg.d_sae
    for c in cards:
        r = results[c.index]
        if c.index >= d_sae:
            r.problems.append(f"index: {c.index} >= d_sae {d_sae}")
        if sha and c.sae.sha256 and c.sae.sha256 != sha:
            r.problems.append(f"sae.sha256: card is for {c.sae.sha256[:12]}, checked against {sha[:12]}")
        r.problems += [f"{path}: {msg}" for path, msg in citation_errors(c)]  # what an annotation says it showed
    valid = [c for c in cards if c.index < d_sae]
    _verify_measured(valid, results, sae, model, tokenizer, special, hook_name, tol)
    _verify_examples(valid, results, sae, model, special, hook_name, tol)
    _verify_logit_effects(valid, results, sae, model, tol)
    return VerifyReport([results[c.index] for c in cards])


def _verify_measured(valid: list[FeatureCard], results: dict[int, CardCheck], sae: Any, model: Any, tokenizer: Any,
                     special: Any, hook_name: str | None, tol: Tolerances) -> None:
    """Stats and downstream effects: one sweep per token set the cards name."""
    groups: dict[str, list[FeatureCard]] = {}
    for c in valid:
        cfg = (c.extra.get("saekit") or {}).get("token_set")
        if cfg and (c.stats is not None or c.downstream):
            key = json.dumps({"ts": cfg, "hook": (c.extra.get("saekit") or {}).get("hook_name"),
                              "bs": (c.extra.get("saekit") or {}).get("batch_size", 4)}, sort_keys=True)
            groups.setdefault(key, []).append(c)
        elif c.stats is not None or c.downstream:
            results[c.index].problems.append(
                "extra.saekit.token_set: the card names no token set; its stats cannot be re-run")
    for key, group in groups.items():
        spec = json.loads(key)
        hook = hook_name or spec["hook"] or sae.cfg.hook_name
        ts_cfg = dict(spec["ts"])  # TokenSet.config(): its corpus is the dataset (a Hub one pinned)
        ts = token_set(tokenizer, dataset=ts_cfg.pop("corpus", "pydoc"), **ts_cfg)
        bs = int(spec["bs"])
        grad = any(d.method == ATTRIBUTION for c in group for d in c.downstream)
        st = sweep(sae, model, ts, hook_name=hook, batch_size=bs, special=special, metrics=False, grad=grad,
                   desc="verify: feature stats").stats
        ablate = sorted({c.index for c in group for d in c.downstream if d.method == ABLATION})
        exact = exact_ablations(sae, model, ts, st, ablate, hook_name=hook, batch_size=bs, special=special,
                                max_rows=max([int(d.details.get("windows", 4)) for c in group for d in c.downstream
                                              if d.method == ABLATION] or [4])) if ablate else {}
        mean, attr = st.mean().tolist(), st.attribution().tolist()
        for c in group:
            r = results[c.index]
            if c.stats is not None:
                if c.stats.data_fingerprint and c.stats.data_fingerprint != ts.fingerprint:
                    r.problems.append(f"stats.data_fingerprint: token set {ts.fingerprint[:12]} differs from the "
                                      f"card's {c.stats.data_fingerprint[:12]}")
                    continue
                _check_stats(r, c, st, mean[c.index], tol)
            _check_effects(r, c, st, attr[c.index], exact, tol)


def _check_stats(r: CardCheck, c: FeatureCard, st: Any, mean: float, tol: Tolerances) -> None:
    L, s = c.index, c.stats
    fires = int(st.fire_count[L])
    r.checked.append("stats")
    got = fires / max(st.n_tokens, 1)
    t = max(tol.density_atol, tol.density_rtol * s.density)
    if abs(got - s.density) > t:
        r.problems.append(f"stats.density: {s.density:.6g} claimed, {got:.6g} measured (tolerance {t:.2g})")
    if s.n_tokens is not None and s.n_tokens != st.n_tokens:
        r.problems.append(f"stats.n_tokens: {s.n_tokens} claimed, {st.n_tokens} counted")
    for name, got_v in (("mean", mean if fires else None), ("max", float(st.act_max[L]) if fires else None)):
        claimed = getattr(s, name)
        if claimed is None and got_v is None:
            continue
        if claimed is None or got_v is None or not tol.close(claimed, got_v):
            r.problems.append(f"stats.{name}: {claimed} claimed, {got_v} measured")
    h = s.histogram
    if h is None:
        return
    grid = GRID.tolist()
    pos = [grid.index(e) if e in grid else None for e in h.bin_edges]
    if None in pos or len(h.bin_edges) != len(h.counts) + 1:
        r.problems.append("stats.histogram.bin_edges: not on saekit's histogram grid; cannot be verified")
        return
    row = st.hist[L].tolist()
    tol_c = max(1.0, tol.count_tol * fires)
    for j, (a, b) in enumerate(zip(pos, pos[1:])):
        got_c = float(sum(row[a:b]))
        if abs(got_c - h.counts[j]) > tol_c:
            r.problems.append(f"stats.histogram.counts[{j}]: {h.counts[j]:g} claimed, {got_c:g} measured")
            break
    outside = sum(row[: pos[0]]) + sum(row[pos[-1] : N_GRID])
    if outside > tol_c:
        r.problems.append(f"stats.histogram: {outside} activations fall outside its bins")


def _check_effects(r: CardCheck, c: FeatureCard, st: Any, attr: float, exact: dict[int, dict[str, Any]],
                   tol: Tolerances) -> None:
    L = c.index
    for j, d in enumerate(c.downstream):
        where = f"downstream[{j}]"
        if d.method == ATTRIBUTION:
            r.checked.append(where)
            if not tol.close(d.value, attr, atol=1e-6, rtol=tol.attribution_tol):
                r.problems.append(f"{where}.value ({ATTRIBUTION}): {d.value:.6g} claimed, {attr:.6g} recomputed")
            if d.n_tokens is not None and d.n_tokens != int(st.attr_count[L]):
                r.problems.append(f"{where}.n_tokens: {d.n_tokens} claimed, {int(st.attr_count[L])} counted")
        elif d.method == ABLATION and L in exact and exact[L]["n"]:
            r.checked.append(where)
            got = exact[L]["delta"] / exact[L]["n"]
            if not tol.close(d.value, got, atol=1e-4, rtol=tol.ablation_tol):
                r.problems.append(f"{where}.value ({ABLATION}): {d.value:.6g} claimed, {got:.6g} re-measured")
        elif d.method in (ATTRIBUTION, ABLATION):
            r.problems.append(f"{where}: {d.method} claimed but the latent does not fire on the token set")


def _latent_values(sae: Any, model: Any, ids: Any, hook: str, latent: int, special: Any) -> tuple[Any, Any, Any]:
    """(its values [ctx], its pre-activation [ctx], the k-th largest value per token [ctx])."""
    import torch

    from saekit.kernels.reference import pre_activations

    acts = run_to_hook(model, ids, hook)
    flat = acts.reshape(-1, sae.cfg.d_in)
    code = sae.encode(flat)
    vals = (code.values.float() * (code.indices == latent)).sum(1).clamp(min=0)
    vals[torch.isin(ids.reshape(-1), special)] = 0.0
    pre = torch.relu(pre_activations(flat, sae)[:, latent])
    return vals, pre, code.values[:, -1].float()


def _verify_examples(valid: list[FeatureCard], results: dict[int, CardCheck], sae: Any, model: Any, special: Any,
                     hook_name: str | None, tol: Tolerances) -> None:
    """Every top and quantile example re-run from its token ids; the top one reaches the max."""
    import torch

    todo = [(c, f"{field}[{j}]", ex) for c in valid for field in ("top_examples", "quantile_examples")
            for j, ex in enumerate(getattr(c, field))]
    with torch.inference_mode(), Progress("verify: examples", total=len(todo)) as bar:
        for c, where, ex in todo:
            r = results[c.index]
            bar.update()
            if not ex.token_ids:
                r.problems.append(f"{where}: no token_ids, cannot be reproduced")
                continue
            hook = hook_name or (c.extra.get("saekit") or {}).get("hook_name") or sae.cfg.hook_name
            vals, pre, kth = _latent_values(sae, model, torch.tensor([ex.token_ids]), hook, c.index, special)
            claimed = torch.tensor(ex.values, dtype=torch.float32)
            if claimed.shape != vals.shape:
                r.problems.append(f"{where}.values: {len(ex.values)} values for {len(ex.token_ids)} tokens")
                continue
            t = tol.value_atol + tol.value_rtol * float(claimed.abs().max())
            diff = (vals - claimed).abs()
            if sae.cfg.architecture in ("topk", "batchtopk"):
                # a latent within tolerance of the k-th largest value may fall in or out of
                # the top k with float noise: either 0 or its pre-activation is then right
                tie = ((pre - kth).abs() <= t) & ((claimed == 0) | ((claimed - pre).abs() <= t))
                diff = torch.where(tie, torch.zeros_like(diff), diff)
            r.checked.append(where)
            if float(diff.max()) > t:
                at = int(diff.argmax())
                r.problems.append(f"{where}.values: {float(claimed[at]):.5g} at token {at} claimed, "
                                  f"{float(vals[at]):.5g} reproduced")
            elif ex.max_value is not None and ex.max_position is not None:
                got = float(vals[ex.max_position])
                if abs(got - ex.max_value) > t:
                    r.problems.append(f"{where}.max_value: {ex.max_value:.5g} claimed, {got:.5g} reproduced")
    for c in valid:  # the top example is the top: it reaches the measured max
        r = results[c.index]
        if c.top_examples and c.stats is not None and c.stats.max is not None and c.top_examples[0].max_value is not None:
            if not tol.close(c.top_examples[0].max_value, c.stats.max) and not any(p.startswith("stats.max") for p in r.problems):
                r.problems.append(f"top_examples[0].max_value: {c.top_examples[0].max_value:.5g}, below the latent's "
                                  f"max {c.stats.max:.5g}")


def _verify_logit_effects(valid: list[FeatureCard], results: dict[int, CardCheck], sae: Any, model: Any,
                          tol: Tolerances) -> None:
    """W_dec[i] @ W_U: each listed value, and that no unlisted token beats the listed ones."""
    import torch

    with_logits = [c for c in valid if c.logit_effects is not None]
    if not with_logits:
        return
    W_U = unembedding(model).float()
    for i in range(0, len(with_logits), 512):
        chunk = with_logits[i : i + 512]
        with torch.no_grad():
            eff = (sae.W_dec[[c.index for c in chunk]].float() @ W_U).cpu()
        for row, c in zip(eff, chunk):
            r = results[c.index]
            r.checked.append("logit_effects")
            for side, sign in (("positive", 1.0), ("negative", -1.0)):
                _check_side(r, getattr(c.logit_effects, side), side, sign, row, tol)


def _check_side(r: CardCheck, listed: list, side: str, sign: float, row: Any, tol: Tolerances) -> None:
    import torch

    for j, e in enumerate(listed):
        if e.token_id is None or not 0 <= e.token_id < row.numel():
            r.problems.append(f"logit_effects.{side}[{j}].token_id: missing or outside the vocabulary")
            return
        got = float(row[e.token_id])
        if not tol.close(e.value, got):
            r.problems.append(f"logit_effects.{side}[{j}].value: {e.value:.5g} claimed for {e.token!r}, "
                              f"{got:.5g} computed")
            return
    if listed:
        ids = torch.tensor([e.token_id for e in listed])
        others = sign * row.clone()
        others[ids] = -float("inf")
        weakest = min(sign * e.value for e in listed)
        best = float(others.max())
        if best > weakest + tol.value_atol + tol.value_rtol * abs(weakest):
            r.problems.append(f"logit_effects.{side}: token id {int(others.argmax())} ({sign * best:.5g}) is missing "
                              "from the listed top tokens")
