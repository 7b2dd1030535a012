"""The main job: the whole saekit story on embedded defaults, end to end.

    train (cached) -> register -> check (metrics, cards, record, gate) -> production alias
    -> explain and score a few latents with the local model -> release bundle (its cards carry
    those explanations and scores) -> publish to a loopback Hub (in-process) -> load back by
    hf:// name

Every step is idempotent, so a second run reuses what the first made: the trained SAE and
converted LM come from the cache folder (SAEKIT_CACHE_DIR), registering identical content returns the
existing version, a version with a recorded check is not checked again, the bundle
rebuilds byte-identical (the local model's answers come from the request cache), and
re-publishing it changes nothing on the Hub.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from saekit.registry import tags as T
from saekit.schemas import GateFailedError, GatePolicy, InputError, safeio
from saekit.schemas.console import say
from saekit.schemas.masking import mask
from saekit.schemas.settings import Settings, current, use_settings

SIZES = ("demo", "test")
RELEASE_VERSION = "0.1.0"
# The bar the demo SAE must clear before it is aliased production and released. Kept
# modest: the demo trains for minutes on a CPU; SAELens' metric names (harness.metrics).
DEMO_RULES = {
    "demo": ["explained_variance >= 0.5"],
    "test": ["explained_variance >= 0.2"],
}
# Check options per size (saekit.harness.check.check keywords): the reduced demo the test
# suite runs skips the per-latent ablations and documents fewer latents.
CHECK_OPTIONS: dict[str, dict[str, Any]] = {
    "demo": {},
    "test": {"downstream": False, "cards_latents": 16},
}


# Latents the demo explains and scores with the local model (SmolLM2-135M-Instruct, in
# process): a few, so the demo shows explanations in its browser and model card at a cost of
# a minute or so on 2 CPU cores (`saekit cards explain` does every latent).
EXPLAIN_LATENTS = {"demo": 8, "test": 2}


def _progress(msg: str) -> None:
    say(f"demo: {msg}")


def run_demo(
    *,
    size: str = "demo",
    tokens: int | None = None,
    out: Path | None = None,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the story; returns a summary (what was made, where, how long each step took).
    ``settings``: where and how (default: the settings in use, see saekit.schemas.settings)."""
    settings = settings or current()
    with use_settings(settings):
        return _run(size=size, tokens=tokens, out=out, dry_run=dry_run, settings=settings)


# What the demo writes in its work folder (--out), and nothing else.
DEMO_ENTRIES = ("release.yaml", "bundle", "hub", "hf-cache", "cards")  # every name the demo writes in its folder


def _demo_entry(name: str) -> bool:
    """One of DEMO_ENTRIES, or a temporary of one left by a killed run (``.bundle.tmp-...``)."""
    return name in DEMO_ENTRIES or any(name.startswith(f".{entry}.") for entry in DEMO_ENTRIES)


def _run(*, size: str, tokens: int | None, out: Path | None, dry_run: bool, settings: Settings) -> dict[str, Any]:

    if size not in SIZES:
        raise InputError(f"size must be one of {', '.join(SIZES)}", where=repr(size))
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    work = Path(out).expanduser().resolve() if out else settings.home / "demo" / size
    # The demo rewrites release.yaml and resets hub/ and hf-cache/ in its work folder: a
    # user's folder holding anything else is refused now, before training, never overwritten.
    if work.exists() and not work.is_dir():
        raise InputError("exists and is not a folder", where=str(work))
    others = sorted(p.name for p in work.iterdir() if not _demo_entry(p.name)) if work.is_dir() else []
    if others:
        raise InputError(f"holds files the demo did not write ({', '.join(map(repr, others[:3]))}); "
                         "give a new or empty folder", where=str(work))
    work.mkdir(parents=True, exist_ok=True)
    name = "smollm2-135m-res-l6" if size == "demo" else "smollm2-135m-res-l6-test"
    summary: dict[str, Any] = {"ok": False, "size": size, "work_dir": str(work), "timings_s": timings}

    def step(label: str, t: float) -> None:
        timings[label] = round(time.perf_counter() - t, 2)

    # 1. train (or reuse) the SAE
    t = time.perf_counter()
    _progress(f"ensuring the {size} SAE (trained once on SmolLM2-135M layer-6 activations, then cached)")
    from saekit.harness.train import ensure_demo_sae

    artifact = Path(ensure_demo_sae(size))
    step("train", t)

    # 2. register (identical content returns the existing version)
    t = time.perf_counter()
    from saekit.registry import store

    info = store.register(name, artifact, alias="candidate",
                          description=f"saekit demo: TopK SAE on SmolLM2-135M layer 6 ({size})")
    summary["sae"] = {"artifact": str(artifact), "name": name, "version": info.version, "sha256": info.sha256,
                      "registry": mask(store.registry_uri())}
    _progress(f"registered {name}/{info.version} sha256 {info.sha256[:12]}")
    step("register", t)

    # 3. check, unless this version already carries a recorded check
    t = time.perf_counter()
    policy = GatePolicy.model_validate({"rules": DEMO_RULES[size]})
    pinned = f"{name}/{info.version}"
    checked_now = False
    if info.tags.get(T.GATE) is None:
        _progress(f"checking {pinned} (metrics, feature cards, benchmark record, gate)")
        from saekit.harness.check import check

        kwargs: dict[str, Any] = {"policy": policy, **CHECK_OPTIONS[size]}
        if tokens:
            kwargs["n_tokens"] = tokens
        check(pinned, **kwargs)
        checked_now = True
        info = store.resolve(pinned)
    else:
        _progress(f"{pinned} already checked (gate {info.tags[T.GATE]}); reusing its record")
    metrics = {k[len(T.METRIC_PREFIX):]: float(v) for k, v in sorted(info.tags.items()) if k.startswith(T.METRIC_PREFIX)}
    summary["check"] = {"gate": info.tags.get(T.GATE), "failed": info.tags.get(T.GATE_FAILED),
                        "eval_id": info.tags.get(T.EVAL_ID), "metrics": metrics, "ran": checked_now,
                        "policy": [str(r) for r in policy.rules]}
    step("check", t)
    from saekit.releases.gate import checked_record

    try:  # the release's own gate decision, which a reused check's tag does not replace
        checked_record(policy, pinned, info, run_checks=False, where="demo")
    except GateFailedError as err:
        summary["check"].update(gate="fail", failed=err.message)
        _progress(f"{err.message}; not releasing")
        summary["total_s"] = round(time.perf_counter() - t0, 2)
        return summary

    # 4. promote
    t = time.perf_counter()
    store.set_alias(name, "production", info.version)
    summary["sae"]["aliases"] = sorted(set(store.resolve(pinned).aliases) | {"production"})
    step("alias", t)

    # 5. explain and score a few latents (answers cached: a rerun asks the model nothing)
    t = time.perf_counter()
    summary["annotate"] = _annotate(store.check_files(name, info.version)["feature_cards.jsonl"], work / "cards",
                                    EXPLAIN_LATENTS[size])
    step("annotate", t)

    # 6. release bundle
    t = time.perf_counter()
    from saekit.registry.artifact import read_cfg
    from saekit.releases.bundle import build, verify
    from saekit.releases.manifest import dump_manifest, parse_manifest

    cfg = read_cfg(artifact / "cfg.json")
    sae_id = f"res-l6-w{cfg.d_sae}-k{cfg.k}"
    repo = f"saekit-demo/smollm2-135m-res-l6{'' if size == 'demo' else '-test'}"
    manifest = parse_manifest({
        "release_id": f"smollm2-135m-res-l6{'' if size == 'demo' else '-test'}",
        "version": RELEASE_VERSION,
        "license": "apache-2.0",
        "base_model": {"id": cfg.model_name or "HuggingFaceTB/SmolLM2-135M-Instruct",
                       **({"revision": cfg.model_revision} if cfg.model_revision else {})},
        "saes": [{"ref": f"{name}@production", "sae_id": sae_id, "cards": "cards/scored.jsonl"}],
        "gate": {"rules": DEMO_RULES[size]},
        "hub_repo": repo,
        "description": "A TopK sparse autoencoder on the layer-6 residual stream of SmolLM2-135M-Instruct, "
        "trained, checked and released by `saekit demo`.",
        "tags": ["smollm2", "topk"],
    })
    manifest_path = work / "release.yaml"
    safeio.write_bytes(manifest_path, dump_manifest(manifest).encode())
    bundle = build(manifest_path, work / "bundle", force=True)  # the demo's own work folder
    release = verify(bundle)
    summary["release"] = {"manifest": str(manifest_path), "bundle": str(bundle), "tag": release.tag,
                          "sae_id": sae_id, "files": len(release.files) + 2,
                          "browser": str(bundle / "browser" / "index.html")}
    step("build", t)

    # 7. publish to a loopback Hub (in-process) and 8. load back by name
    from saekit.releases.publish import publish

    t = time.perf_counter()
    ref = f"hf://{repo}@{release.tag}/{sae_id}"
    if dry_run:
        result = publish(bundle, repo, dry_run=True)
        summary["publish"] = result.to_dict() | {"endpoint": None}
        step("publish", t)
    else:
        import shutil

        from saekit.testing.loopback_hub import serve
        from saekit.releases.publish import TagConflictError

        server = serve(work / "hub")
        try:
            # The HF cache for loopback content stays in the work folder, not the user's.
            hub = settings.replace(hub_endpoint=server.url, hub_cache=str(work / "hf-cache"))
            try:
                with use_settings(hub):
                    result = publish(bundle, repo, endpoint=server.url)
            except TagConflictError:
                # The demo's own loopback Hub holds this tag from a different saekit
                # (the bundle layout changed): it is scratch space, so start it afresh.
                _progress(f"the loopback Hub holds an older {release.tag} with other content; resetting it")
                server.stop()
                shutil.rmtree(work / "hub")
                shutil.rmtree(work / "hf-cache", ignore_errors=True)
                server = serve(work / "hub")
                hub = hub.replace(hub_endpoint=server.url)
                with use_settings(hub):
                    result = publish(bundle, repo, endpoint=server.url)
            summary["publish"] = result.to_dict() | {"endpoint": f"{server.url} (loopback Hub, repos in {work / 'hub'})"}
            step("publish", t)
            t = time.perf_counter()
            with use_settings(hub):
                summary["load"] = _load_back(ref, pinned)
            step("load", t)
        finally:
            server.stop()
    summary["ok"] = bool(summary.get("load", {}).get("identical", dry_run))
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    return summary


def _annotate(cards: Path, out: Path, n: int) -> dict[str, Any]:
    """Explain the ``n`` lowest-index latents that have examples and zero windows, then score them (delphi's
    detection, with its control); all the cards go to ``out/scored.jsonl``. Few examples are
    shown to the explainer, so some are left to score with. SmolLM2-135M cannot write delphi's
    list answer, so each window is its own one-token forced choice, read from the answer
    token's probabilities (``per_prompt=1``, harness.score): short windows, one scorer and
    one-token answers keep it to about a second a request on 2 CPU cores (1 explanation and
    12 scoring requests a latent, its control included). `cards score` runs them all."""
    from saekit.schemas.card_files import read_cards

    # detection needs both kinds of window: activating examples and the card's zero windows
    chosen = sorted(c.index for c in read_cards(cards) if c.top_examples and c.negative_examples)[:n]
    if not chosen:
        return {"latents": 0}
    latents = ",".join(map(str, chosen)) + ","
    _progress(f"explaining and scoring latents {latents.rstrip(',')} with the local model")
    import torch

    # One thread while the local model answers: on this 2-core machine, shared, a request took
    # 33 s with torch's 2 threads and 7 s with 1 (298 tokens in, 16 out, load average 8).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _explain_and_score(cards, out, chosen, latents)
    finally:
        torch.set_num_threads(threads)


def _explain_and_score(cards: Path, out: Path, chosen: list[int], latents: str) -> dict[str, Any]:
    from saekit.harness.explain import ExplainOptions, explain_files
    from saekit.harness.llm_client import CachedClient, LocalChatClient, Params, RequestCache
    from saekit.harness.score import ScoreOptions, score_files

    client = CachedClient(LocalChatClient(), RequestCache(current().cache("llm-requests")))
    ex = explain_files([cards], out / "explained.jsonl", client,
                       ExplainOptions(n_top=3, n_quantile=2, max_example_tokens=24, params=Params(max_tokens=16),
                                      concurrency=1),
                       latents=latents)
    sc = score_files([out / "explained.jsonl"], out / "scored.jsonl", client,
                     ScoreOptions(n_pos=3, n_neg=3, per_prompt=1, max_example_tokens=24, concurrency=1,
                                  scorers=("detection",), params=Params(max_tokens=1, logprobs=True)),
                     latents=latents)
    return {"latents": len(chosen), "explained": ex.explained, "failed": ex.failed, "scored": sc.scored,
            "means": sc.means, "control_means": sc.control_means, "requests_sent": client.sent,
            "requests_cached": client.cached, "tokens_in": client.tokens_in, "tokens_out": client.tokens_out,
            "cards": str(out / "scored.jsonl")}


def _load_back(ref: str, pinned: str) -> dict[str, Any]:
    """Load the published SAE by hf:// name and compare it with the registry's copy."""
    import torch

    import saekit

    _progress(f"loading {ref}")
    hub_sae = saekit.load(ref)
    reg_sae = saekit.load(pinned)
    x = torch.randn(256, hub_sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    a, b = hub_sae.encode(x), reg_sae.encode(x)
    same = bool(torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices))
    return {"ref": ref, "sha256": hub_sae.ref.sha256 if hub_sae.ref else None, "commit": hub_sae.ref.version if hub_sae.ref else None,
            "identical": same and hub_sae.ref is not None and reg_sae.ref is not None and hub_sae.ref.sha256 == reg_sae.ref.sha256}


def summary_table(s: dict[str, Any]) -> list[str]:
    """The demo's result for people, as lines (the CLI escapes each): what was made and where."""
    rows: list[tuple[str, str, str]] = []
    t = s.get("timings_s", {})

    def sec(k: str) -> str:
        return f"{t[k]:.1f}s" if k in t else ""

    if "sae" in s:
        sae = s["sae"]
        rows.append(("train", f"{sae['name']} artifact", sae["artifact"]))
        rows.append(("register", f"{sae['name']}/{sae['version']} sha256 {sae['sha256'][:12]}",
                     f"aliases: {', '.join(sae.get('aliases', [])) or '-'}"))
    if "check" in s:
        c = s["check"]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(c["metrics"].items())[:5])
        rows.append(("check", f"gate {c['gate']}" + ("" if c["ran"] else " (recorded)"), shown or "-"))
    if s.get("annotate", {}).get("latents"):
        a = s["annotate"]
        det = a["means"].get("detection balanced_accuracy")
        ctl = a["control_means"].get("detection balanced_accuracy")
        rows.append(("annotate", f"{a['explained']} of {a['latents']} latents explained, {a['scored']} scored",
                     "detection " + ("-" if det is None else f"{det:.2f}") + " vs control "
                     + ("-" if ctl is None else f"{ctl:.2f}") + f"; {a['requests_sent']} requests, "
                     f"{a['requests_cached']} cached"))
    if "release" in s:
        r = s["release"]
        rows.append(("build", f"bundle {r['tag']} ({r['files']} files)", r["bundle"]))
        rows.append(("browser", "static feature browser", r["browser"]))
    if "publish" in s:
        p = s["publish"]
        what = "dry run" if p["dry_run"] else (f"commit {p['commit'][:12]}" + (" (unchanged)" if not p["changed"] else ""))
        rows.append(("publish", f"{p['repo_id']}@{p['tag']} {what}", p.get("endpoint") or "-"))
    if "load" in s:
        ld = s["load"]
        rows.append(("load", ld["ref"], "identical to the registry copy" if ld["identical"] else "DIFFERS from the registry copy"))
    w1 = max(len(r[0]) for r in rows) if rows else 5
    w2 = max(len(r[1]) for r in rows) if rows else 5
    lines = [f"{'step':<{w1}}  {'what':<{w2}}  {'time':>7}  where"]
    lines += [f"{a:<{w1}}  {b:<{w2}}  {sec(a if a != 'browser' else '__'):>7}  {c}" for a, b, c in rows]
    status = "ok" if s.get("ok") else "FAILED"
    lines.append(f"demo {status} in {s.get('total_s', 0):.1f}s (work folder {s['work_dir']})")
    return lines
