"""A small TopK SAE trained on real SmolLM2-135M activations: the SAE the demo and the
tests check. Not a training library: plain Adam on cached activations, a few hundred steps.

Recipe (TopK SAE, Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
W_enc initialised to W_decᵀ, decoder rows kept at unit norm, b_dec initialised to the
activation mean, loss = mean over tokens of ||x - x_hat||². Training tokens come from the
``train`` split of the text corpus (the checks use the held-out ``eval`` split); special
tokens (BOS) are left out, as in the evals.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saekit.schemas import InputError
from saekit.schemas.console import Progress, say
from saekit.schemas.settings import cache_dir
from saekit.schemas.version import __version__

DEMO_HOOK = "model.layers.6"
TRAIN_VERSION = "2"  # bump when the recipe changes: it is part of the cache key


@dataclass(frozen=True)
class TrainConfig:
    d_sae: int
    k: int
    n_tokens: int  # activations collected (before dropping special tokens)
    steps: int
    batch_size: int
    lr: float
    context_size: int = 128
    hook_name: str = DEMO_HOOK
    corpus: str = "pydoc"


SIZES: dict[str, TrainConfig] = {
    # the main job's SAE: 576 -> 4608 (x8), k 32; a few minutes on 2 cores
    "demo": TrainConfig(d_sae=4608, k=32, n_tokens=65_536, steps=400, batch_size=1024, lr=1e-3),
    # the test suite's SAE: 576 -> 1152 (x2), k 16; well under a minute on 2 cores
    "test": TrainConfig(d_sae=1152, k=16, n_tokens=8192, steps=200, batch_size=256, lr=2e-3),
}


def _save(sae: Any, folder: Path) -> str:
    """Write a canonical artifact folder (the registry's format); returns its sha256."""
    from saekit.registry.artifact import save_artifact

    return save_artifact(sae, folder)


def train_activations(cfg: TrainConfig, seed: int = 0) -> Any:
    """Training activations [n, d_in] (special tokens dropped), cached on disk by content."""
    import torch
    from safetensors.torch import load_file, save_file

    from saekit.harness.activations import run_to_hook
    from saekit.harness.model import load_lm, lm_info
    from saekit.harness.text import special_token_ids, token_set

    info = lm_info()
    key = hashlib.sha256(
        json.dumps([info.weights_sha256, cfg.hook_name, cfg.corpus, cfg.n_tokens, cfg.context_size, seed]).encode()
    ).hexdigest()[:20]
    path = cache_dir("activations") / f"train-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["activations"]
    model, tok = load_lm()
    ts = token_set(tok, n_tokens=cfg.n_tokens, context_size=cfg.context_size, corpus=cfg.corpus, split="train", seed=seed)
    keep = ~torch.isin(ts.tokens, torch.tensor(special_token_ids(tok)))
    chunks = []
    with Progress("training activations", total=ts.tokens.shape[0]) as bar:
        for i in range(0, ts.tokens.shape[0], 16):
            batch = ts.tokens[i : i + 16]
            acts = run_to_hook(model, batch, cfg.hook_name)
            chunks.append(acts[keep[i : i + 16]].float())
            bar.update(batch.shape[0])
    acts = torch.cat(chunks).contiguous()
    tmp = path.with_suffix(".tmp")
    save_file({"activations": acts}, str(tmp), metadata={"fingerprint": ts.fingerprint})
    tmp.replace(path)
    return acts


def train_topk(acts: Any, cfg: TrainConfig, *, seed: int = 0) -> dict[str, Any]:
    """Train a TopK SAE on ``acts`` [n, d_in]; returns SAELens-named float32 tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, d_in = acts.shape
    W_dec = torch.randn(cfg.d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": W_dec.T.clone().requires_grad_(),
        "b_enc": torch.zeros(cfg.d_sae, requires_grad=True),
        "W_dec": W_dec.clone().requires_grad_(),
        "b_dec": acts.mean(0).clone().requires_grad_(),
    }
    opt = torch.optim.Adam(params.values(), lr=cfg.lr)
    # normalise the loss by the data variance so one learning rate fits any activation scale
    var = (acts - acts.mean(0)).pow(2).sum(1).mean()
    with Progress("training SAE steps", total=cfg.steps) as bar:
        for step in range(cfg.steps):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
            x = acts[idx]
            pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            vals, inds = torch.topk(torch.relu(pre), cfg.k, dim=1)
            z = torch.zeros_like(pre).scatter(1, inds, vals)
            x_hat = z @ params["W_dec"] + params["b_dec"]
            loss = (x - x_hat).pow(2).sum(1).mean() / var
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # keep decoder rows at unit norm: drop the gradient along each row, then renormalise
            with torch.no_grad():
                W, G = params["W_dec"], params["W_dec"].grad
                G -= (G * W).sum(1, keepdim=True) * W
            opt.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
            bar.update()
    return {k: v.detach().contiguous() for k, v in params.items()}


def _key(cfg: TrainConfig, seed: int, weights_sha256: str | None) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "seed": seed, "model": weights_sha256, "v": TRAIN_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_demo_sae(size: str = "demo", *, seed: int = 0) -> Path:
    """A canonical artifact folder of a TopK SAE trained on SmolLM2-135M layer-6 residual
    activations, trained once per (size, seed, model weights) and reused from
    SAEKIT_CACHE_DIR/saes/. ``size``: 'demo' (576 -> 4608, k 32) or 'test' (576 -> 1152, k 16).
    """
    import torch

    from saekit.harness.model import DEFAULT_MODEL_ID, lm_info
    from saekit.harness.text import corpus_label
    from saekit.kernels import SAE
    from saekit.schemas import Provenance, SAEConfig

    if size not in SIZES:
        raise InputError(f"unknown size {size!r}; expected one of {sorted(SIZES)}", where="ensure_demo_sae")
    cfg = SIZES[size]
    info = lm_info()
    folder = cache_dir("saes") / f"smollm2-res-l6-topk-{size}-s{seed}-{_key(cfg, seed, info.weights_sha256)}"
    if (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
        return folder
    t0 = time.perf_counter()
    say(f"training the {size} SAE (576 -> {cfg.d_sae}, k {cfg.k}, seed {seed}) once; cached in {folder}")
    # Every seed trains on the same activations (data seed 0): seeds differ only in
    # initialisation and batch order, so two seeds are comparable (saekit diff).
    acts = train_activations(cfg)
    torch.manual_seed(seed)
    tensors = train_topk(acts, cfg, seed=seed)
    sae_cfg = SAEConfig(
        architecture="topk",
        d_in=acts.shape[1],
        d_sae=cfg.d_sae,
        k=cfg.k,
        dtype="float32",
        apply_b_dec_to_input=True,
        model_name=DEFAULT_MODEL_ID,
        model_revision=info.revision,
        hook_name=cfg.hook_name,
        context_size=cfg.context_size,
        prepend_bos=True,
        provenance=Provenance(
            library="saekit",
            library_version=__version__,
            dataset=corpus_label(cfg.corpus) + " (train split)",
            tokens=cfg.steps * cfg.batch_size,
            seed=seed,
            source=f"saekit.harness.train size={size} steps={cfg.steps} lr={cfg.lr} batch={cfg.batch_size}",
        ),
    )
    _save(SAE(sae_cfg, tensors), folder)
    say(f"trained the {size} SAE in {time.perf_counter() - t0:.1f} s")
    return folder
