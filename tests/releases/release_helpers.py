"""Hand-made SAEs, benchmark records and feature cards, registered and checked through the
real registry API, so release tests do not depend on training or the language model.
(A uniquely named module: tests/*/conftest.py files all import as ``conftest``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECORD_MS = 1_763_000_000_000  # fixed: bundles must not depend on the clock
TOKENS = [" the", " dog", " poodle", " barked", " at", " a", " cat", "."]


def make_sae(d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0):
    import torch

    from saekit.kernels import SAE
    from saekit.schemas import SAEConfig

    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        architecture="topk", d_in=d_in, d_sae=d_sae, k=k,
        model_name="HuggingFaceTB/SmolLM2-135M-Instruct", hook_name="model.layers.6", context_size=32,
    )
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    tensors = {"W_enc": w, "b_enc": torch.zeros(d_sae), "W_dec": w.T.contiguous(), "b_dec": torch.randn(d_in, generator=g) * 0.01}
    return SAE(cfg, tensors)


def make_record(name: str, version: int, sha: str, d_sae: int, *, ev: float = 0.9, l0: float = 4.0) -> dict:
    return {
        "eval_type_id": "core",
        "eval_config": {"n_tokens": 1024, "context_size": 32, "seed": 0},
        "eval_id": f"core-{sha[:12]}",
        "datetime_epoch_millis": RECORD_MS,
        "eval_result_metrics": {
            "reconstruction_quality": {"explained_variance": ev, "mse": 0.01, "cossim": 0.95},
            "sparsity": {"l0": l0, "l1": 12.5},
            "misc": {"dead_fraction": 0.05},
        },
        "sae": {"name": name, "version": str(version), "sha256": sha, "d_sae": d_sae},
        "data": {"source": "text:harness/data/sample.txt", "fingerprint": "ab" * 32, "n_tokens": 1024, "context_size": 32},
    }


def make_cards(name: str, version: int, sha: str, d_sae: int, *, rich: bool = False) -> list[dict]:
    """Cards of a hand-made SAE; latent 7 fires on " labrador" ("dog breeds"). ``rich``: latent 7
    also has quantile examples, an activation histogram and downstream effects (the browser's
    every section)."""
    cards = []
    for i in range(d_sae):
        toks = TOKENS[i % 3 :] + TOKENS[: i % 3]
        vals = [0.0] * len(toks)
        vals[2] = 1.0 + i / 10
        vals[3] = 0.4
        card = {
            "sae": {"name": name, "version": str(version), "sha256": sha, "d_sae": d_sae},
            "index": i,
            "stats": {"density": 0.0 if i % 16 == 15 else 10 ** (-1 - (i % 5)), "mean": 0.5, "max": vals[2], "n_tokens": 1024},
            "top_examples": [{"tokens": toks, "values": vals, "max_position": 2}],
            "logit_effects": {"positive": [{"token": " woof", "value": 1.5}], "negative": [{"token": " meow", "value": -1.2}]},
        }
        if i == 7:
            card["annotations"] = [{"label": "dog breeds", "source": "human"}]
            card["top_examples"] = [{"tokens": [" my", " labrador", " sat"], "values": [0.0, 3.5, 0.2], "max_position": 1}]
            if rich:
                card["quantile_examples"] = [
                    {"tokens": [" a", " spaniel", " ran"], "values": [0.0, 1.25, 0.0], "max_position": 1, "bin": "quantile_50"},
                    {"tokens": [" the", " terrier", "."], "values": [0.0, 0.5, 0.0], "max_position": 1, "bin": "quantile_12"},
                ]
                card["stats"]["histogram"] = {"bin_edges": [0.0, 1.0, 2.0, 3.0, 4.0], "counts": [9.0, 4.0, 2.0, 1.0]}
                card["downstream"] = [
                    {"task": "sample", "metric": "delta_ce_loss_per_firing_token", "value": 0.0421,
                     "method": "exact-ablation", "n_tokens": 12},
                    {"task": "sample", "metric": "delta_ce_loss_per_firing_token", "value": 0.0397,
                     "method": "attribution", "n_tokens": 12},
                ]
        cards.append(card)
    return cards


def _record(scorer: str, value: float | None, control: bool) -> dict:
    return {"scorer": scorer, "metric": "balanced_accuracy", "value": value, "chance": 0.5, "n_pos": 5, "n_neg": 5,
            "n_failed": 0 if value is not None else 10, "control": control, "scorer_model": "local-smol"}


def explain_cards(cards: list[dict]) -> list[dict]:
    """``cards`` as `cards explain` and `cards score` leave them (schema 1.1, hand-made answers):
    latents 0-3 explained "explanation of latent I" and scored by detection (0.6 + I/10,
    control 0.5) and fuzzing (0.7, control 0.4; no value for latent 3: all its windows
    failed); latent 5's request failed. Latent 7 keeps its human label."""
    prov = {"model": "local-smol", "endpoint_kind": "local", "prompt_template": "saekit-explain-v1",
            "prompt_sha256": "0" * 64, "sampling": {"temperature": 0.0, "seed": 0, "max_tokens": 32}}
    out = []
    for c in cards:
        c = {**c, "schema_version": "1.1", "annotations": list(c.get("annotations") or [])}
        i = c["index"]
        if i < 4:
            c["annotations"].append({
                "description": f"explanation of latent {i}", "source": "auto", "explainer_model": "local-smol",
                "type_name": "saekit-explain-v1", "provenance": prov,
                "score_records": [_record("detection", 0.6 + i / 10, False), _record("detection", 0.5, True),
                                  _record("fuzzing", None if i == 3 else 0.7, False), _record("fuzzing", 0.4, True)]})
        elif i == 5:
            c["annotations"].append({"source": "auto", "explainer_model": "local-smol", "type_name": "saekit-explain-v1",
                                     "provenance": {**prov, "error": "HTTP 500 after 5 tries"}})
        out.append(c)
    return out


def register_checked(name: str, seed: int, tmp: Path, *, gate: str = "pass", alias: str = "production", ev: float = 0.9,
                     rich: bool = False):
    """Register a hand-made SAE and log a hand-made check on it; returns its VersionInfo.
    ``rich``: see make_cards."""
    from saekit.registry import store

    info = store.register(name, make_sae(seed=seed), alias=alias)
    d_sae = 64
    folder = tmp / f"check-{name}-{info.version}"
    folder.mkdir(parents=True, exist_ok=True)
    rec = make_record(name, info.version, info.sha256, d_sae, ev=ev, l0=4.0 + seed)
    (folder / "eval.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
    (folder / "feature_cards.jsonl").write_text(
        "".join(json.dumps(c, sort_keys=True) + "\n" for c in make_cards(name, info.version, info.sha256, d_sae, rich=rich))
    )
    tags = {"saekit.gate": gate, "saekit.eval_id": rec["eval_id"], "metric.explained_variance": str(ev)}
    if gate != "pass":
        tags["saekit.gate_failed"] = f"explained_variance {ev} < 0.7"
    store.log_check(name, info.version, metrics={"explained_variance": ev},
                    files=[folder / "eval.json", folder / "feature_cards.jsonl"], tags=tags)
    return store.resolve(f"{name}/{info.version}")


def checked_bundle(home: Path, out: Path, *, repo: str = "org/x") -> Path:
    """A bundle saekit built at ``out`` from one checked SAE registered in the saekit home
    ``home``: what ``release publish`` accepts (it verifies every SAE against that registry)."""
    import pytest

    from saekit.releases.bundle import build

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAEKIT_HOME", str(home))
        info = register_checked("checked", 0, out.parent / "checked-sae")
        return build(write_manifest(out.parent / "checked.yaml", [(f"checked/{info.version}", "sae")], repo=repo), out)


def write_manifest(path: Path, saes: list[tuple[str, str]], *, version: str = "1.0.0", repo: str = "saekit-test/smollm2-saes",
                   rules: list[str] | None = None) -> Path:
    import yaml

    data = {
        "release_id": "smollm2-saes",
        "version": version,
        "license": "apache-2.0",
        "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "saes": [{"ref": ref, "sae_id": sid} for ref, sid in saes],
        "gate": {"rules": rules or ["explained_variance >= 0.5"]},
        "hub_repo": repo,
        "description": "Test release.",
        "tags": ["smollm2"],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_py(code: str, env: dict[str, str] | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """Python in a fresh process (huggingface_hub reads HF_ENDPOINT when it is imported)."""
    full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**full, **(env or {})})
