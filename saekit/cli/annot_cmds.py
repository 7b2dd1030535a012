"""saekit cards explain | score: options and printing; the work is saekit.harness.explain and
saekit.harness.score, the model behind them saekit.harness.llm_client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from saekit.cli.app import JSON_OPTION, cards_app, emit, settings_of

ENDPOINT = typer.Option(
    None, "--endpoint", help="An OpenAI-compatible server (http://host:port/v1). Default: the local model, in process."
)
MODEL = typer.Option(None, "--model", help="Model id (required with --endpoint).")
API_KEY_ENV = typer.Option(
    None, "--api-key-env", help="Environment variable holding the API key (default OPENAI_API_KEY, if set)."
)
LATENTS = typer.Option("all", "--latents", help="all, a count N (the N lowest indices), or indices i,j,...")
CONCURRENCY = typer.Option(4, "--concurrency", min=1, max=64, help="Requests in flight at once.")
TIMEOUT = typer.Option(60.0, "--timeout", min=0.1, help="Seconds to connect, and between bytes of an answer.")


def _client(ctx: typer.Context, endpoint: str | None, model: str | None, api_key_env: str | None, timeout: float):
    """(the cached client, a function giving the HTTP requests sent so far, retries included)."""
    from saekit.harness.llm_client import CachedClient, LocalChatClient, OpenAIChatClient, RequestCache
    from saekit.schemas import InputError

    if endpoint is None:
        if api_key_env:
            raise InputError("--api-key-env needs --endpoint", where="--api-key-env")
        client = LocalChatClient(model)
    else:
        if not model:
            raise InputError("--endpoint needs --model ID", where="--model")
        key = os.environ.get(api_key_env or "OPENAI_API_KEY") or None
        if api_key_env and key is None:
            raise InputError("environment variable is not set", where=api_key_env)
        client = OpenAIChatClient(endpoint, model, api_key=key, timeout=timeout)
    cached = CachedClient(client, RequestCache(settings_of(ctx).cache("llm-requests")))
    return cached, lambda: getattr(client, "requests_sent", None)


@cards_app.command("explain")
def explain(
    ctx: typer.Context,
    cards: List[Path] = typer.Argument(..., help="Card files (.json, .jsonl, .jsonl.gz) or folders of them."),
    out: Path = typer.Option(..., "--out", help="Where every card goes, the chosen ones explained (.jsonl, .jsonl.gz, .json)."),
    endpoint: Optional[str] = ENDPOINT,
    model: Optional[str] = MODEL,
    api_key_env: Optional[str] = API_KEY_ENV,
    latents: str = LATENTS,
    concurrency: int = CONCURRENCY,
    timeout: float = TIMEOUT,
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, max=4096, help="Tokens per explanation."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run: finished latents are not asked again."),
    price_in: float = typer.Option(0.0, "--price-in", min=0.0, help="Price per million input tokens, for the projection."),
    price_out: float = typer.Option(0.0, "--price-out", min=0.0, help="Price per million output tokens."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Write an explanation of each chosen latent from its card's activating examples.

    Temperature 0 and a fixed seed; answers are cached under the cache folder, so a rerun
    sends no request and writes the same bytes. A latent whose request fails (after retries
    for 429, 5xx and timeouts) gets its failure recorded on its annotation; the exit code is 0.
    Exit 2: unreadable cards, a bad option, an API key variable that is not set.
    """
    from saekit.harness.explain import ExplainOptions, explain_files
    from saekit.harness.llm_client import Params

    cached, http = _client(ctx, endpoint, model, api_key_env, timeout)
    opts = ExplainOptions(params=Params(max_tokens=max_tokens), concurrency=1 if endpoint is None else concurrency)
    s = explain_files(cards, out, cached, opts, latents=latents, resume=resume)
    cost = s.projected_cost(price_in, price_out) if price_in or price_out else None
    text = (
        f"explained {s.explained}, failed {s.failed}, resumed {s.resumed} of {s.latents} latents "
        f"in {s.seconds:.1f} s ({s.latents_per_s:.2f} latents/s)\n"
        f"requests sent {s.requests_sent}" + (f" ({http()} over HTTP, retries included)" if endpoint else "")
        + f", cached {s.requests_cached}; tokens in {s.tokens_in}, out {s.tokens_out}\n"
        + "".join(f"latent {i}: {why}\n" for i, why in sorted(s.failures.items()))
        + (f"projected cost of all {s.d_sae} latents: {cost:.2f} at {price_in:g}/{price_out:g} per million tokens\n"
           if cost is not None else "")
        + f"wrote {s.out}"
    )
    emit({**s.to_dict(), "http_requests": http(), "projected_cost": cost}, json_out, text)


@cards_app.command("score")
def score(
    ctx: typer.Context,
    cards: List[Path] = typer.Argument(..., help="Explained card files (.json, .jsonl, .jsonl.gz) or folders of them."),
    out: Path = typer.Option(..., "--out", help="Where every card goes, the chosen ones with their scores."),
    endpoint: Optional[str] = ENDPOINT,
    model: Optional[str] = MODEL,
    api_key_env: Optional[str] = API_KEY_ENV,
    latents: str = LATENTS,
    concurrency: int = CONCURRENCY,
    timeout: float = TIMEOUT,
    scorers: Optional[List[str]] = typer.Option(
        None, "--scorer", help="detection, fuzzing or saebench_autointerp (repeat for several; default all three)."
    ),
    logprobs: bool = typer.Option(
        True, "--logprobs/--no-logprobs", help="Ask for token log-probabilities (for AUC); off for servers that refuse them."
    ),
    per_prompt: int = typer.Option(
        5, "--per-prompt", min=1, max=20,
        help="Excerpts per detection/fuzzing prompt (delphi: 5). 1: a forced choice of 1 or 0 read from the "
             "first answer token's probabilities, for models that cannot write the list answer.",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Score each chosen latent's explanation with delphi's detection and fuzzing (balanced
    accuracy, chance 0.5; AUC too where the model gives log-probabilities) and SAEBench's
    autointerp protocol (accuracy over 14 sequences; its SAEBench record is written beside
    OUT), and with another latent's explanation as the control.

    Windows: activating examples the explainer did not see, and windows where the latent is
    zero. A failed request or an unparseable answer counts in n_failed, never as a wrong
    answer; a latent with nothing scored gets value null. Exit 0 whatever the model answers.
    """
    from saekit.harness.llm_client import Params
    from saekit.harness.score import SCORERS, ScoreOptions, score_files

    cached, http = _client(ctx, endpoint, model, api_key_env, timeout)
    opts = ScoreOptions(concurrency=1 if endpoint is None else concurrency, scorers=tuple(scorers or SCORERS),
                        per_prompt=per_prompt, params=Params(max_tokens=1 if per_prompt == 1 else 32, logprobs=logprobs))
    s = score_files(cards, out, cached, opts, latents=latents)
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    text = (
        f"scored {s.scored} of {s.latents} latents ({s.no_explanation} without an explanation) in {s.seconds:.1f} s\n"
        + "".join(f"{name}: mean {fmt(s.means[name])}, control {fmt(s.control_means[name])}"
                  + (", chance 0.500\n" if name.startswith(("detection", "fuzzing")) else "\n") for name in s.means)
        + f"{s.n_failed} windows failed\n"
        + f"requests sent {s.requests_sent}, cached {s.requests_cached}; tokens in {s.tokens_in}, out {s.tokens_out}\n"
        f"wrote {s.out}" + (f"\nwrote {s.saebench_record}" if s.saebench_record else "")
    )
    emit({**s.to_dict(), "http_requests": http()}, json_out, text)
