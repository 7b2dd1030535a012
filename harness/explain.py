"""Explain latents from their cards' activating examples, with any chat model (issue 21).

    from saekit.harness.explain import ExplainOptions, explain_files
    summary = explain_files(["cards.jsonl"], "explained.jsonl", client, ExplainOptions())

For each chosen card, the prompt shows its first top examples and quantile examples with
the activating tokens marked ``<<like this>>``: a run of tokens whose activation exceeds
``mark_threshold`` times the example's maximum goes inside one pair of brackets, as delphi
marks them (EleutherAI/delphi, delphi/explainers/explainer.py, ``Explainer._highlight``,
threshold 0.3 of the maximum) and as SAEBench's autointerp prompt does. The answer becomes an
``Annotation`` whose ``provenance`` names the model, weights, prompt template (name and
sha256), sampling parameters, the examples shown and the tokens spent. A latent whose
request fails, or whose answer holds no explanation, gets an annotation with
``provenance.error`` instead; the run goes on and ends normally.

Nothing is half-written: finished latents go to a journal beside the output (one JSON line
each, flushed and synced), and the output cards are written once, at the end, by temp file
and rename. ``resume=True`` takes the finished explanations from the journal of a killed run
(made with the same options) and asks again only for the rest, and for the failures.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saekit.harness.llm_client import CachedClient, Params
from saekit.schemas import EndpointError, InputError
from saekit.schemas.card import (
    ActivationExample,
    Annotation,
    AnnotationProvenance,
    ExampleRef,
    FeatureCard,
    SamplingParams,
)
from saekit.schemas.card_files import read_cards, write_cards
from saekit.schemas.console import Progress

TEMPLATE_NAME = "saekit-explain-v1"
_SYSTEM = (
    "You are studying one feature of a language model. You see text excerpts where the feature is active; "
    "the tokens where it is most active are marked <<like this>>. Say in a short phrase (at most 12 words) "
    "what the feature responds to. Answer with the phrase only."
)
_USER = "Excerpts:\n{examples}\n\nWhat does the feature respond to?"
TEMPLATE_SHA256 = hashlib.sha256(f"{_SYSTEM}\n---\n{_USER}".encode()).hexdigest()
MAX_EXPLANATION_CHARS = 200


@dataclass(frozen=True)
class ExplainOptions:
    """What the explainer shows and how it asks; every field is recorded or keys the journal."""

    n_top: int = 10
    n_quantile: int = 5
    mark_threshold: float = 0.3
    max_example_tokens: int = 64
    params: Params = field(default_factory=lambda: Params(max_tokens=32))
    concurrency: int = 4


@dataclass
class ExplainSummary:
    """What a run did: latents, requests (sent, from the cache, over HTTP) and tokens."""

    out: str
    latents: int = 0
    explained: int = 0
    failed: int = 0
    resumed: int = 0
    requests_sent: int = 0
    requests_cached: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    d_sae: int | None = None
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def latents_per_s(self) -> float:
        return (self.latents - self.resumed) / self.seconds if self.seconds > 0 else 0.0

    def projected_cost(self, price_in: float, price_out: float) -> float | None:
        """The cost of explaining all ``d_sae`` latents at these prices per million tokens, from
        this run's tokens per latent (cached answers count: they cost as much to ask anew)."""
        asked = self.latents - self.resumed
        if not asked or not self.d_sae:
            return None
        return (self.tokens_in * price_in + self.tokens_out * price_out) / 1e6 / asked * self.d_sae

    def to_dict(self) -> dict:
        return {**asdict(self), "latents_per_s": round(self.latents_per_s, 3)}


# --- the prompt ----------------------------------------------------------------------------


def mark(tokens: list[str], values: list[float], threshold: float = 0.3) -> str:
    """The tokens as text, each run of tokens above ``threshold`` x max inside ``<<...>>``."""
    top = max(values, default=0.0)
    cut = top * threshold
    out: list[str] = []
    inside = False
    for tok, v in zip(tokens, values):
        hot = top > 0 and v > cut
        if hot != inside:
            out.append("<<" if hot else ">>")
            inside = hot
        out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out)


def example_window(ex: ActivationExample, size: int) -> tuple[list[str], list[float]]:
    """At most ``size`` tokens of ``ex``, ending a few tokens after its maximum."""
    peak = ex.max_position if ex.max_position is not None else ex.values.index(max(ex.values))
    end = min(len(ex.tokens), peak + 1 + size // 8)
    start = max(0, end - size)
    return ex.tokens[start:end], ex.values[start:end]


def pick_examples(card: FeatureCard, opts: ExplainOptions) -> list[tuple[ExampleRef, ActivationExample]]:
    """The examples shown: the first ``n_top`` top and ``n_quantile`` quantile examples that fire.

    The rest stay unseen, for scoring on held-out examples."""
    picked = []
    for where, examples, n in (("top_examples", card.top_examples, opts.n_top),
                               ("quantile_examples", card.quantile_examples, opts.n_quantile)):
        firing = [(i, ex) for i, ex in enumerate(examples) if ex.values and max(ex.values) > 0]
        picked += [(ExampleRef(where=where, index=i, bin=ex.bin), ex) for i, ex in firing[:n]]
    return picked


def messages_for(examples: list[ActivationExample], opts: ExplainOptions) -> list[dict[str, str]]:
    lines = [f"{n}. {mark(*example_window(ex, opts.max_example_tokens), opts.mark_threshold)}" for n, ex in enumerate(examples, 1)]
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER.format(examples="\n".join(lines))}]


def parse_explanation(text: str) -> str | None:
    """The explanation in an answer: its first non-empty line, without a label, quotes or
    control characters (an endpoint's text ends up in terminals and browsers)."""
    for line in text.splitlines():
        line = "".join(ch for ch in line if ch.isprintable()).strip()
        for prefix in ("[EXPLANATION]:", "Explanation:", "Answer:"):
            if line.lower().startswith(prefix.lower()):
                line = line[len(prefix):].strip()
        line = line.strip("\"'` *")
        if line:
            return line[:MAX_EXPLANATION_CHARS]
    return None


# --- one latent -------------------------------------------------------------------------------


def explain_card(card: FeatureCard, client: CachedClient, opts: ExplainOptions) -> Annotation:
    """The annotation for one card: an explanation, or the reason there is none."""
    picked = pick_examples(card, opts)
    p = opts.params
    prov = dict(
        model=client.model, weights_sha256=client.weights_sha256, endpoint_kind=client.endpoint_kind,
        prompt_template=TEMPLATE_NAME, prompt_sha256=TEMPLATE_SHA256,
        sampling=SamplingParams(temperature=p.temperature, seed=p.seed, max_tokens=p.max_tokens),
        examples=[ref for ref, _ in picked],
    )
    base = dict(source="auto", explainer_model=client.model, type_name=TEMPLATE_NAME)
    if not picked:
        return Annotation(**base, provenance=AnnotationProvenance(**prov, error="no activating examples in the card"))
    try:
        reply = client.generate(messages_for([ex for _, ex in picked], opts), p)
    except EndpointError as err:
        return Annotation(**base, provenance=AnnotationProvenance(**prov, error=str(err)))
    prov.update(server_version=reply.server_version, tokens_in=reply.tokens_in, tokens_out=reply.tokens_out)
    text = parse_explanation(reply.text)
    if text is None:
        return Annotation(**base, provenance=AnnotationProvenance(**prov, error="the answer holds no explanation"))
    return Annotation(**base, description=text, created_at=reply.created_at, provenance=AnnotationProvenance(**prov))


# --- a run: choosing latents, the journal, the output ----------------------------------------------


def choose(cards: list[FeatureCard], latents: str) -> list[FeatureCard]:
    """``all``; ``N``: the N lowest indices; ``i,j,...``: those indices (``5,`` for latent 5 alone)."""
    ordered = sorted(cards, key=lambda c: c.index)
    spec = latents.strip()
    if spec == "all":
        return ordered
    try:
        if "," not in spec:
            n = int(spec)
            if n < 1:
                raise ValueError
            return ordered[:n]
        wanted = {int(x) for x in spec.split(",") if x.strip()}
    except ValueError:
        raise InputError("--latents must be all, a count N, or indices i,j,...", where=latents) from None
    missing = wanted - {c.index for c in cards}
    if missing:
        raise InputError(f"no card for latent {min(missing)}", where="--latents")
    return [c for c in ordered if c.index in wanted]


def _key(card: FeatureCard) -> str:
    return f"{card.sae.name}@{card.sae.version or ''}#{card.index}"


def run_id(client: CachedClient, opts: ExplainOptions, cards: list[FeatureCard]) -> str:
    """What a journal's explanations depend on: resuming with anything else would mix runs."""
    doc = {"model": client.model, "weights": client.weights_sha256, "template": TEMPLATE_SHA256,
           "opts": asdict(opts) | {"concurrency": None}, "cards": [_key(c) for c in cards]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a card file path, refused before any request if it cannot be one."""
    if str(out) == "-":
        raise InputError("needs a file: the summary goes to stdout", where="--out")
    out = Path(out)
    if out.is_dir():
        raise InputError("is a folder; name the card file to write", where=str(out))
    return out


def journal_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.explain-journal.jsonl")


def _read_journal(path: Path, expected_run: str) -> dict[str, Annotation]:
    """Finished explanations of a killed run; a torn last line (the kill) is skipped."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise InputError(f"cannot read the journal: {err.strerror}", where=str(path)) from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    if not isinstance(header, dict) or header.get("run") != expected_run:
        raise InputError("the interrupted run used other cards or options; run again without --resume",
                         where=str(path))
    done: dict[str, Annotation] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            ann = Annotation.model_validate(row["annotation"])
        except (ValueError, KeyError, TypeError):
            continue
        if ann.description is not None:  # failures are asked again
            done[row["key"]] = ann
    return done


def _with(card: FeatureCard, ann: Annotation) -> FeatureCard:
    """``card`` (as schema 1.1) with ``ann`` replacing an annotation of the same template and model."""
    kept = [a for a in card.annotations if (a.type_name, a.explainer_model) != (ann.type_name, ann.explainer_model)]
    return card.model_copy(update={"annotations": [*kept, ann], "schema_version": "1.1"})


def read_chosen(inputs: list[str | os.PathLike], out: str | os.PathLike,
                latents: str) -> tuple[Path, list[FeatureCard], list[FeatureCard]]:
    """(the checked output path, every card of ``inputs``, the ``latents`` chosen among them):
    what explain and score both start from; no cards at all is an input error."""
    out = check_out(out)
    cards = read_cards(inputs)
    if not cards:
        raise InputError("no cards", where=", ".join(map(str, inputs)))
    return out, cards, choose(cards, latents)


def explain_files(
    inputs: list[str | os.PathLike], out: str | os.PathLike, client: CachedClient, opts: ExplainOptions,
    *, latents: str = "all", resume: bool = False,
) -> ExplainSummary:
    """Explain the chosen latents of the cards in ``inputs``; every card goes to ``out``."""
    out, cards, chosen = read_chosen(inputs, out, latents)
    rid = run_id(client, opts, chosen)
    jpath = journal_path(out)
    done = _read_journal(jpath, rid) if resume else {}
    d_sae = max((c.sae.d_sae or 0 for c in cards), default=0) or len(cards)
    summary = ExplainSummary(out=str(out), latents=len(chosen), resumed=len(done), d_sae=d_sae)
    results: dict[str, Annotation] = dict(done)
    todo = [c for c in chosen if _key(c) not in done]
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=max(1, opts.concurrency))
    try:
        with open(jpath, "ab" if resume and done else "wb") as journal, \
                Progress("explain", len(todo), unit="latents") as progress:
            if journal.tell() == 0:
                _append(journal, {"run": rid})
            futures = {pool.submit(explain_card, c, client, opts): c for c in todo}
            for fut in as_completed(futures):
                card = futures[fut]
                ann = fut.result()
                results[_key(card)] = ann
                _append(journal, {"key": _key(card), "annotation": ann.model_dump(exclude_none=True)})
                progress.update()
    finally:  # Ctrl-C or an error: drop the queued latents (the journal keeps the finished ones)
        pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - t0
    for card in chosen:
        ann = results[_key(card)]
        if ann.description is None:
            summary.failed += 1
            summary.failures[card.index] = ann.provenance.error if ann.provenance else "failed"
        else:
            summary.explained += 1
    write_cards([_with(c, results[_key(c)]) if _key(c) in results else c for c in cards], out)
    jpath.unlink(missing_ok=True)
    summary.requests_sent, summary.requests_cached = client.sent, client.cached
    summary.tokens_in, summary.tokens_out = client.tokens_in, client.tokens_out
    return summary


def _append(journal, row: dict) -> None:
    journal.write(json.dumps(row, sort_keys=True).encode("utf-8") + b"\n")
    journal.flush()
    os.fsync(journal.fileno())
