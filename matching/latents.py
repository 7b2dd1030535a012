"""Feature matching across SAE versions and widths (``saekit diff``), and carrying feature-card
annotations along the resulting mapping (``saekit cards carry``).

Similarity of latent i of A and latent j of B is the mean, over the chosen views, of

- ``decoder``: cosine of the decoder rows ``W_dec[i]`` and ``W_dec[j]`` (the default),
- ``encoder``: cosine of the encoder columns ``W_enc[:, i]`` and ``W_enc[:, j]``,
- ``coact``: Pearson correlation of the two latents' activations on one shared token batch.

(Paulo & Belrose 2025, "Sparse Autoencoders Trained on the Same Data Learn Different
Features", match seeds by encoder and decoder cosine with an optimal assignment; Bricken et
al. 2023, "Towards Monosemanticity", compare features across runs by activation correlation.)

Each view turns a latent into a unit vector; scaling the view's vectors by ``1/sqrt(#views)``
and concatenating them makes a single dot product equal that mean, so every similarity is one
blocked matrix product ``U @ V.T``. The [n_a, n_b] matrix is never held (131k x 131k fp32
would be 64 GiB): blocks of ``block x block`` are reduced on the fly to each latent's nearest
neighbour on the other side (value and index), both directions at once.

Links and relations. Latent a of A links to its nearest B latent, and latent b of B to its
nearest A latent, when that similarity is >= ``threshold``; with ``assignment="exact"`` the
pairs of an optimal one-to-one assignment (scipy.optimize.linear_sum_assignment, only where
the full matrix fits, see EXACT_MAX_ENTRIES) above the threshold are links too. A mutual
nearest-neighbour pair is always a link both ways. From the links:

- ``same``  a has one linked B latent b, and b has no other linked A latent,
- ``split`` a has two or more linked B latents (its nearest, and B latents whose nearest is a),
- ``merge`` a has one linked B latent b, and b has other linked A latents too,
- ``gone``  a has no link;  ``new``  a B latent with no link.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, NamedTuple, Sequence

import numpy as np
import torch
from pydantic import ValidationError

from saekit.harness.activations import LMActivationSource
from saekit.harness.model import load_lm
from saekit.harness.text import special_token_ids, token_set
from saekit.schemas import (
    ArtifactFormatError,
    CarriedFrom,
    FeatureCard,
    Histogram,
    InputError,
    SAERef,
    safeio,
)
from saekit.schemas.card_files import jsonl_lines
from saekit.schemas.matching import RELATIONS, LatentMatch, MatchSummary, mapping_errors

if TYPE_CHECKING:
    from saekit.kernels import SAE

View = Literal["decoder", "encoder", "coact"]
VIEWS: tuple[str, ...] = ("decoder", "encoder", "coact")
DEFAULT_THRESHOLD = 0.7
DEFAULT_BLOCK = 4096
# Exact assignment holds the full similarity matrix (fp32, plus scipy's fp64 copy):
# 2**25 entries ~ 384 MiB, e.g. 5792 x 5792 latents.
EXACT_MAX_ENTRIES = 1 << 25
# Histogram bins of best similarities: one bin for negatives, then 0.05 steps.
HIST_EDGES = [-1.0] + [round(0.05 * i, 2) for i in range(21)]
CARRY_RELATIONS: tuple[str, ...] = ("same", "split", "merge")


# --- latents as vectors ---------------------------------------------------------------------


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; all-zero rows (dead latents) stay zero."""
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def activation_profiles(sae: SAE, acts: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """[d_sae, n_tokens] centered activations of every latent on the token batch ``acts``."""
    n = acts.shape[0]
    dense = torch.zeros(n, sae.cfg.d_sae, dtype=torch.float32)
    for i in range(0, n, chunk):
        code = sae.encode(acts[i : i + chunk].to(sae.device))
        dense[i : i + chunk].scatter_(1, code.indices.cpu(), code.values.float().cpu())
    dense -= dense.mean(0, keepdim=True)
    return dense.T.contiguous()


def lm_activations(sae: SAE, n_tokens: int, *, seed: int = 0, context_size: int = 128) -> torch.Tensor:
    """A shared token batch [n, d_in] for the ``coact`` view: the SAE's language model and
    hook (default SmolLM2-135M-Instruct) on the held-out ``eval`` split of the harness corpus,
    special tokens (BOS) dropped as in the harness' evals."""
    if not sae.cfg.hook_name:
        raise InputError("the SAE names no hook to read activations at; pass --acts", where="--by coact")
    model, tok = load_lm(sae.cfg.model_name)
    prepend_bos = True if sae.cfg.prepend_bos is None else bool(sae.cfg.prepend_bos)
    ts = token_set(tok, n_tokens=n_tokens, context_size=context_size, split="eval", seed=seed, prepend_bos=prepend_bos)
    special = torch.tensor(special_token_ids(tok))
    chunks = [acts[~torch.isin(toks, special)].float() for toks, acts in LMActivationSource(model, ts, sae.cfg.hook_name)]
    return torch.cat(chunks)[:n_tokens]


def latent_vectors(sae: SAE, by: Sequence[View] = ("decoder",), acts: torch.Tensor | None = None) -> torch.Tensor:
    """[d_sae, D] fp32 rows whose dot products are the mean over ``by`` of the views' cosines."""
    by = _check_views(by)
    weight = 1.0 / math.sqrt(len(by))
    parts = []
    for view in by:
        if view == "decoder":
            v = sae.W_dec.detach().float().cpu()
        elif view == "encoder":
            v = sae.W_enc.detach().float().cpu().T
        else:
            if acts is None:
                raise InputError("the coact view needs a token batch (acts [n, d_in])", where="saekit diff")
            v = activation_profiles(sae, acts)
        parts.append(_unit_rows(v) * weight)
    return torch.cat(parts, dim=1).contiguous() if len(parts) > 1 else parts[0].contiguous()


def _check_views(by: Sequence[str]) -> list[str]:
    views = list(dict.fromkeys(by))
    bad = [v for v in views if v not in VIEWS]
    if not views or bad:
        raise InputError(f"unknown similarity view(s) {bad}; choose from {', '.join(VIEWS)}", where="--by")
    return views


# --- nearest neighbours, blocked -------------------------------------------------------------


class Nearest(NamedTuple):
    """Each latent's nearest neighbour on the other side."""

    a_index: torch.Tensor
    """[n_a] int64: nearest B latent of each A latent (lowest index on ties)."""
    a_sim: torch.Tensor
    """[n_a] fp32: its similarity."""
    b_index: torch.Tensor
    """[n_b] int64: nearest A latent of each B latent."""
    b_sim: torch.Tensor
    """[n_b] fp32: its similarity."""


Precision = Literal["float32", "bfloat16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def nearest(
    U: torch.Tensor,
    V: torch.Tensor,
    *,
    block: int = DEFAULT_BLOCK,
    full: np.ndarray | None = None,
    precision: Precision = "float32",
) -> Nearest:
    """Nearest neighbours both ways under ``U @ V.T``, one ``block x block`` tile at a time.

    Memory beyond U and V: two tiles (128 MiB at block 4096, fp32). ``full``, when given, is
    an [n_a, n_b] fp32 array that receives the whole matrix (exact assignment only).
    ``precision="bfloat16"`` ranks with bf16 products (about 2.5x faster on CPUs with
    AVX512-BF16 or AMX; neighbours within ~0.005 of each other may swap) and then recomputes
    the chosen pairs' similarities in fp32, so every reported similarity is exact.
    """
    if precision not in _DTYPES:
        raise InputError(f"unknown precision {precision!r}; choose float32 or bfloat16", where="--precision")
    dtype = _DTYPES[precision]
    n_a, n_b = U.shape[0], V.shape[0]
    Uc, Vc = U.to(dtype), V.to(dtype)
    a_sim = torch.full((n_a,), -math.inf)
    a_idx = torch.zeros(n_a, dtype=torch.int64)
    b_sim = torch.full((n_b,), -math.inf)
    b_idx = torch.zeros(n_b, dtype=torch.int64)
    tile = torch.empty(min(block, n_a), min(block, n_b), dtype=dtype)
    # Column maxima of a row-major tile are ~3x slower in torch than row maxima plus a
    # transposing copy, so the tile is copied into a transposed buffer for the B side.
    tile_t = torch.empty(min(block, n_b), min(block, n_a), dtype=dtype)
    for j in range(0, n_b, block):
        Vj = Vc[j : j + block].T.contiguous()
        nj = Vj.shape[1]
        col_sim = torch.full((nj,), -math.inf)
        col_idx = torch.zeros(nj, dtype=torch.int64)
        for i in range(0, n_a, block):
            Ui = Uc[i : i + block]
            ni = Ui.shape[0]
            S = tile[:ni, :nj]
            torch.mm(Ui, Vj, out=S)
            if full is not None:
                full[i : i + ni, j : j + nj] = S.float().numpy()
            # Rows: nearest B latent within this tile; strict > keeps the lowest index on ties.
            v, k = S.max(dim=1)
            v = v.float()
            better = v > a_sim[i : i + ni]
            a_sim[i : i + ni][better] = v[better]
            a_idx[i : i + ni][better] = k[better] + j
            # Columns: nearest A latent within this tile.
            T = tile_t[:nj, :ni]
            T.copy_(S.T)
            v, k = T.max(dim=1)
            v = v.float()
            better = v > col_sim
            col_sim[better] = v[better]
            col_idx[better] = k[better] + i
        b_sim[j : j + nj] = col_sim
        b_idx[j : j + nj] = col_idx
    if dtype != torch.float32:
        a_sim = _pair_sims(U, V, torch.arange(n_a), a_idx)
        b_sim = _pair_sims(U, V, b_idx, torch.arange(n_b))
    return Nearest(a_idx, a_sim, b_idx, b_sim)


def _pair_sims(U: torch.Tensor, V: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """fp32 similarity of the pairs (U[ia[n]], V[ib[n]])."""
    out = torch.empty(len(ia))
    for s in range(0, len(ia), chunk):
        out[s : s + chunk] = (U[ia[s : s + chunk]].float() * V[ib[s : s + chunk]].float()).sum(1)
    return out


# --- links and relations ---------------------------------------------------------------------


@dataclass
class Matching:
    """The result of match(): one LatentMatch per A latent plus one per new B latent."""

    rows: list[LatentMatch]
    summary: MatchSummary
    nearest: Nearest = field(repr=False)


def _clip(x: np.ndarray) -> np.ndarray:
    # float32 products of unit vectors can land a hair outside [-1, 1]
    return np.clip(np.round(x.astype(np.float64), 6), -1.0, 1.0)


def _exact_pairs(full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # scipy is not a dependency of saekit's base install
        raise InputError("exact assignment needs scipy (pip install scipy)", where="--assignment exact") from err
    rows, cols = linear_sum_assignment(full, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def relate(
    near: Nearest,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[LatentMatch]:
    """Mapping rows from nearest neighbours (and optional one-to-one ``pairs`` (a, b, sim))."""
    a_idx, a_sim = near.a_index.numpy(), near.a_sim.numpy()
    b_idx, b_sim = near.b_index.numpy(), near.b_sim.numpy()
    n_a, n_b = len(a_idx), len(b_idx)

    ma, mb = a_sim >= threshold, b_sim >= threshold
    ea = [np.nonzero(ma)[0], b_idx[mb]]
    eb = [a_idx[ma], np.nonzero(mb)[0]]
    es = [a_sim[ma], b_sim[mb]]
    if pairs is not None:
        pa, pb, ps = pairs
        keep = ps >= threshold
        ea.append(pa[keep])
        eb.append(pb[keep])
        es.append(ps[keep].astype(np.float32))
    ea, eb, es = (np.concatenate(x) for x in (ea, eb, es))
    # a mutual pair arrives from both sides: keep one link per (a, b)
    _, first = np.unique(ea.astype(np.int64) * n_b + eb, return_index=True)
    ea, eb, es = ea[first], eb[first], es[first]
    deg_a = np.bincount(ea, minlength=n_a)
    deg_b = np.bincount(eb, minlength=n_b)

    order = np.lexsort((-es, ea))  # by a, then best similarity first
    ea, eb, es = ea[order], eb[order], _clip(es[order])
    starts = np.concatenate([[0], np.cumsum(deg_a)])
    a_best, b_best = _clip(a_sim), _clip(b_sim)

    rows: list[LatentMatch] = []
    for a in range(n_a):
        lo, hi = starts[a], starts[a + 1]
        bs, ss = eb[lo:hi].tolist(), es[lo:hi].tolist()
        if hi == lo:
            relation = "gone"
        elif hi - lo >= 2:
            relation = "split"
        else:
            relation = "merge" if deg_b[bs[0]] >= 2 else "same"
        rows.append(
            LatentMatch(
                a=a, b=bs, b_similarity=ss, similarity=float(a_best[a]), nearest=int(a_idx[a]), relation=relation
            )
        )
    for b in np.nonzero(deg_b == 0)[0].tolist():
        s = float(b_best[b])
        rows.append(LatentMatch(a=None, b=[b], b_similarity=[s], similarity=s, nearest=int(b_idx[b]), relation="new"))
    return rows


def _histogram(values: torch.Tensor) -> Histogram:
    v = np.clip(values.numpy().astype(np.float64), -1.0, 1.0)
    counts, _ = np.histogram(v, bins=HIST_EDGES)
    return Histogram(bin_edges=list(HIST_EDGES), counts=[float(c) for c in counts])


def match_vectors(
    U: torch.Tensor,
    V: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    assignment: Literal["mnn", "exact", "auto"] = "mnn",
    block: int = DEFAULT_BLOCK,
    precision: Precision = "float32",
) -> tuple[list[LatentMatch], Nearest, str]:
    """Rows for latent vectors U [n_a, D] and V [n_b, D] (rows of unit norm, as latent_vectors
    makes them); returns (rows, nearest, assignment used). Exact assignment ranks in fp32."""
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold} is outside [-1, 1]", where="--threshold")
    if assignment not in ("mnn", "exact", "auto"):
        raise InputError(f"unknown assignment {assignment!r}; choose mnn, exact or auto", where="--assignment")
    if U.shape[1] != V.shape[1]:
        raise InputError(f"latent vectors differ in length: {U.shape[1]} vs {V.shape[1]}", where="saekit diff")
    entries = U.shape[0] * V.shape[0]
    if assignment == "exact" and entries > EXACT_MAX_ENTRIES:
        raise InputError(
            f"{U.shape[0]} x {V.shape[0]} latents is too large for exact assignment "
            f"(at most {EXACT_MAX_ENTRIES} pairs); use --assignment mnn",
            where="--assignment exact",
        )
    used = "exact" if assignment == "exact" or (assignment == "auto" and entries <= EXACT_MAX_ENTRIES) else "mnn"
    full = np.empty((U.shape[0], V.shape[0]), dtype=np.float32) if used == "exact" else None
    near = nearest(U.float(), V.float(), block=block, full=full, precision="float32" if full is not None else precision)
    pairs = None
    if full is not None:
        pa, pb = _exact_pairs(full)
        pairs = (pa, pb, full[pa, pb])
        del full
    return relate(near, threshold=threshold, pairs=pairs), near, used


def _ref_of(sae: SAE, fallback: str) -> SAERef:
    if sae.ref is not None:
        return sae.ref
    return SAERef(name=fallback, d_sae=sae.cfg.d_sae)


def match(
    sae_a: SAE,
    sae_b: SAE,
    *,
    by: Sequence[View] = ("decoder",),
    acts: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    assignment: Literal["mnn", "exact", "auto"] = "mnn",
    block: int = DEFAULT_BLOCK,
    precision: Precision = "float32",
    ref_a: SAERef | None = None,
    ref_b: SAERef | None = None,
) -> Matching:
    """Match the latents of ``sae_a`` to those of ``sae_b`` (see the module docstring).

    ``acts`` is a shared token batch [n, d_in] of the activations both SAEs read, needed
    only for the ``coact`` view.
    """
    if sae_a.cfg.d_in != sae_b.cfg.d_in:
        raise InputError(
            f"SAEs read different spaces: d_in {sae_a.cfg.d_in} vs {sae_b.cfg.d_in}", where="saekit diff"
        )
    by = _check_views(by)
    if acts is not None and acts.shape[-1] != sae_a.cfg.d_in:
        raise InputError(f"token batch has width {acts.shape[-1]}, SAEs read {sae_a.cfg.d_in}", where="--acts")
    start = time.perf_counter()
    acts2 = acts.reshape(-1, sae_a.cfg.d_in) if acts is not None else None
    U = latent_vectors(sae_a, by, acts2)
    V = latent_vectors(sae_b, by, acts2)
    rows, near, used = match_vectors(
        U, V, threshold=threshold, assignment=assignment, block=block, precision=precision
    )
    counts = {r: 0 for r in RELATIONS}
    for row in rows:
        counts[row.relation] += 1
    summary = MatchSummary(
        sae_a=ref_a or _ref_of(sae_a, "A"),
        sae_b=ref_b or _ref_of(sae_b, "B"),
        by=by,
        threshold=threshold,
        assignment=used,
        n_tokens=int(acts2.shape[0]) if acts2 is not None and "coact" in by else None,
        counts=counts,
        histogram=_histogram(near.a_sim),
        histogram_b=_histogram(near.b_sim),
        seconds=round(time.perf_counter() - start, 3),
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return Matching(rows, summary, near)


# --- mapping files -----------------------------------------------------------------------------


def summary_path(mapping: Path) -> Path:
    """The summary written beside a mapping file: ``map.jsonl`` -> ``map.summary.json``."""
    return mapping.with_suffix(".summary.json") if mapping.suffix else mapping.with_name(mapping.name + ".summary.json")


def write_mapping(matching: Matching, path: Path) -> Path:
    """Write the mapping (JSONL) and its summary beside it (safeio.write_bytes: a link at
    either is refused before either is written); returns the mapping path."""
    path = Path(path)
    safeio.check_writable(path, summary_path(path))
    safeio.write_bytes(path, ((row.model_dump_json(exclude_defaults=False) + "\n").encode() for row in matching.rows))
    safeio.write_bytes(summary_path(path), (matching.summary.model_dump_json(indent=2) + "\n").encode())
    return path


def read_mapping(path: Path) -> list[LatentMatch]:
    """Read and validate a mapping file (schema and cross-field checks)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("mapping file not found", where=str(path))
    rows = []
    for n, line in jsonl_lines(path):  # bounded, like every JSONL file saekit reads
        try:
            row = LatentMatch.model_validate_json(line)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "line"
            raise ArtifactFormatError(f"{loc}: {first['msg']}", where=f"{path}:{n}") from None
        errs = mapping_errors(row)
        if errs:
            raise ArtifactFormatError(f"{errs[0][0]}: {errs[0][1]}", where=f"{path}:{n}")
        rows.append(row)
    return rows


def read_summary(mapping: Path) -> MatchSummary | None:
    """The summary beside a mapping file, if there is one."""
    p = summary_path(Path(mapping))
    if not p.is_file():
        return None
    try:
        return MatchSummary.model_validate_json(p.read_text())
    except ValidationError as err:
        raise ArtifactFormatError(f"not a diff summary: {err.errors()[0]['msg']}", where=str(p)) from None


# --- carrying annotations ----------------------------------------------------------------------


def _by_index(cards: Iterable[FeatureCard], where: str) -> dict[int, FeatureCard]:
    out: dict[int, FeatureCard] = {}
    for card in cards:
        if card.index in out:
            raise InputError(f"two cards for latent {card.index}", where=where)
        out[card.index] = card
    return out


@dataclass
class CarryResult:
    """B's cards with the carried annotations, and what happened."""

    cards: list[FeatureCard]
    carried: int = 0
    """Annotations added."""
    latents: int = 0
    """B latents that received at least one annotation."""
    created: int = 0
    """B cards created because B had no card for a matched latent."""
    skipped_existing: int = 0
    """Annotations already present on B (carry is idempotent)."""


def carry(
    cards_a: Iterable[FeatureCard],
    cards_b: Iterable[FeatureCard],
    rows: Iterable[LatentMatch],
    *,
    sae_b: SAERef | None = None,
    relations: Sequence[str] = CARRY_RELATIONS,
    min_similarity: float | None = None,
    create_missing: bool = True,
) -> CarryResult:
    """Copy A's annotations onto the B latents each A latent matched.

    Every carried annotation gets ``carried_from`` (A's SAE reference, the A latent, the
    similarity of the pair). B's own annotations are never changed or removed: carried ones
    are appended, and one already present on the B card is not added twice. A B latent with
    no card gets a new card (``create_missing``), which needs B's SAE reference from ``sae_b``
    or from B's other cards.
    """
    bad = [r for r in relations if r not in CARRY_RELATIONS]
    if bad:
        raise InputError(f"cannot carry along {bad}; choose from {', '.join(CARRY_RELATIONS)}", where="--relations")
    a_cards = _by_index(cards_a, "cards A")
    b_cards = {i: c.model_copy(deep=True) for i, c in _by_index(cards_b, "cards B").items()}
    if sae_b is None and b_cards:
        sae_b = next(iter(b_cards.values())).sae
    result = CarryResult(cards=[])
    touched: set[int] = set()
    for row in rows:
        if row.relation not in relations or row.a is None or row.a not in a_cards:
            continue
        src = a_cards[row.a]
        if not src.annotations:
            continue
        for b, sim in zip(row.b, row.b_similarity):
            if min_similarity is not None and sim < min_similarity:
                continue
            card = b_cards.get(b)
            if card is None:
                if not create_missing:
                    continue
                if sae_b is None:
                    raise InputError("B has no cards to take its SAE reference from", where="--to")
                card = b_cards[b] = FeatureCard(sae=sae_b, index=b)
                result.created += 1
            if card.sae.d_sae is not None and b >= card.sae.d_sae:
                raise InputError(f"mapping names B latent {b} >= d_sae {card.sae.d_sae}", where="--mapping")
            origin = CarriedFrom(sae=src.sae, index=row.a, similarity=sim)
            present = [x.model_dump() for x in card.annotations]
            for ann in src.annotations:
                new = ann.model_copy(update={"carried_from": origin})
                if new.model_dump() in present:
                    result.skipped_existing += 1
                    continue
                card.annotations.append(new)
                result.carried += 1
                touched.add(b)
    result.latents = len(touched)
    result.cards = [b_cards[i] for i in sorted(b_cards)]
    return result


def check_mapping_fits(summary: MatchSummary | None, cards_a: Sequence[FeatureCard], cards_b: Sequence[FeatureCard]) -> None:
    """Refuse a mapping computed for other SAEs than the cards describe (by sha256 when known)."""
    if summary is None:
        return
    for side, ref, cards in (("A", summary.sae_a, cards_a), ("B", summary.sae_b, cards_b)):
        for card in cards[:1]:
            if ref.sha256 and card.sae.sha256 and ref.sha256 != card.sae.sha256:
                raise InputError(
                    f"mapping was computed for SAE {side} sha256 {ref.sha256[:12]}, the cards describe "
                    f"{card.sae.sha256[:12]}",
                    where="--mapping",
                )
            if ref.d_sae and card.sae.d_sae and ref.d_sae != card.sae.d_sae:
                raise InputError(
                    f"mapping was computed for SAE {side} with d_sae {ref.d_sae}, the cards have {card.sae.d_sae}",
                    where="--mapping",
                )
