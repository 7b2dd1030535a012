"""TopK (or ReLU) transcoders for every MLP of SmolLM2-135M, trained one layer at a time and
registered as one transcoder set (``saekit train transcoders``).

Activations are streamed one layer at a time: the residual stream entering the current
block is kept for all training tokens (n x d_model floats), the block is run on it with the
arguments the model itself passed its first block (rotary embeddings, causal mask), its
MLP's input and output are captured for training, and its output becomes the next block's
input. Memory holds one layer's data (three n x d_model tensors), whatever the number of
layers, and nothing goes to disk but the trained weights; the model runs once in all.

Recipe, as sparsify trains TopK transcoders (sparsify 1.3.3 ``sparse_coder.py``
``SparseCoder.__init__`` / ``encode`` / ``forward``): no b_dec subtracted from the input
(``transcode``), pre = relu(x @ W_enc + b_enc), the k largest kept, y_hat = z @ W_dec +
b_dec; W_enc as nn.Linear initialises it, b_enc zero, W_dec zero (sparsify's transcoder
initialisation) and not normalised; loss = FVU = sum||y - y_hat||^2 / sum||y - mean y||^2.
Adam, a fixed number of steps on random minibatches. One departure, for a few hundred
steps on a CPU: b_dec starts at the mean output (sparsify: zero). The AuxK loss on dead
latents is optional (``auxk_alpha``, ``auxk_loss``), and so is a ReLU variant with an L1
penalty instead of TopK (``activation="relu"``, ``fit_relu_transcoder``). The codes
are scattered into a dense [batch, d_sae] tensor: on CPU two dense products are faster
than gathering k decoder rows per token (index_add over n*k rows was 15x slower).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from saekit.schemas import InputError
from saekit.schemas.console import Progress, say

TC_TRAIN_VERSION = "1"  # bump when the recipe changes: part of the cache key


@dataclass(frozen=True)
class TCTrainConfig:
    """What determines a trained transcoder set (its cache key)."""

    width: int = 1152  # latents per layer (d_sae)
    k: int = 16
    n_tokens: int = 8192  # training tokens collected (before dropping special tokens)
    steps: int = 200
    batch_size: int = 512
    lr: float = 2e-3
    context_size: int = 128
    corpus: str = "pydoc"
    seed: int = 0
    layers: tuple[int, ...] | None = None  # None: every layer
    auxk_alpha: float = 0.0  # weight of the AuxK loss on dead latents (0: none; sparsify/OpenAI use 1/32)
    activation: str = "topk"  # "topk", or "relu" (continuous: sparsity from an L1 penalty, k unused)
    l1_coeff: float = 0.1  # relu: weight of the decoder-norm-weighted L1 penalty


@dataclass
class LayerFit:
    """One trained layer: SAELens-named float32 tensors and how the fit went."""

    layer: int
    tensors: dict[str, Any]
    train_fvu: float  # FVU on all its training tokens, after training
    seconds: float  # training (excluding the model's forward)
    n_tokens: int
    extra: dict[str, float] = field(default_factory=dict)


def mlp_module(model: Any, layer: int) -> str:
    """Module path of block ``layer``'s MLP (saekit.harness.hooks.LAYOUTS)."""
    from saekit.harness.hooks import LAYOUTS

    family = getattr(getattr(model, "config", None), "model_type", "")
    layout = LAYOUTS.get(family or "")
    if layout is None:
        raise InputError(f"transcoder training knows no block layout for model type {family!r}", where="model")
    return f"{layout.layers}.{layer}.{layout.mlp_out}"


def _blocks(model: Any) -> Any:
    from saekit.harness.hooks import LAYOUTS, module

    return module(model, LAYOUTS[model.config.model_type].layers)


def n_blocks(model: Any) -> int:
    """Number of transformer blocks of ``model``."""
    return len(_blocks(model))


class _Stop(Exception):
    pass


def _block_call(model: Any, toks: Any) -> tuple[Any, tuple, dict]:
    """(hidden states, other args, kwargs) the model passes its first block for ``toks``:
    what every block of the forward pass receives besides the residual stream."""
    blocks = _blocks(model)
    box: dict[str, Any] = {}

    def grab(_m: Any, args: tuple, kwargs: dict) -> None:
        box["args"], box["kwargs"] = args, kwargs
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(toks, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    args, kwargs = box["args"], dict(box["kwargs"])
    if args:
        return args[0], tuple(args[1:]), kwargs
    return kwargs.pop("hidden_states"), (), kwargs


def stream_mlp_io(model: Any, tokens: Any, layers: list[int], *, batch_size: int = 16,
                  keep: Any = None) -> Iterator[tuple[int, Any, Any]]:
    """``(layer, x, y)`` for each layer in ``layers`` (ascending): the MLP's input x and output
    y [n, d] in float32 over the token rows ``tokens`` [rows, ctx] (positions where ``keep``
    [rows, ctx] is False left out), one layer at a time (module docstring)."""
    import torch

    blocks = _blocks(model)
    todo = sorted(set(layers))
    if not todo:
        return
    if todo[-1] >= len(blocks) or todo[0] < 0:
        raise InputError(f"layer {todo[-1] if todo[-1] >= len(blocks) else todo[0]} is out of range: the model has "
                         f"{len(blocks)} blocks", where="layers")
    keep = torch.ones_like(tokens, dtype=torch.bool) if keep is None else keep
    # no_grad is entered per step, never held across a yield: the caller trains with autograd
    resid, calls = [], []
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            h, args, kwargs = _block_call(model, tokens[i : i + batch_size])
            resid.append(h)
            calls.append((args, kwargs))
    with Progress("transcoder activations, layer by layer", total=todo[-1] + 1) as bar:
        for layer in range(todo[-1] + 1):
            with torch.no_grad():
                xy = _run_block(model, blocks[layer], layer, resid, calls, keep, batch_size, layer in todo)
            bar.update()
            if xy is not None:
                yield (layer, *xy)


def _run_block(model: Any, block: Any, layer: int, resid: list, calls: list, keep: Any, batch_size: int,
               capture: bool) -> tuple[Any, Any] | None:
    """Run ``block`` on every batch's residual (replaced in ``resid`` by the block's output);
    with ``capture`` the MLP's input and output at the kept positions, float32 [n, d]."""
    import torch

    io: dict[str, Any] = {}

    def grab(_m: Any, args: tuple, out: Any) -> None:
        io["x"], io["y"] = args[0], out

    handle = model.get_submodule(mlp_module(model, layer)).register_forward_hook(grab) if capture else None
    xs, ys = [], []
    try:
        for b, (h, (args, kwargs)) in enumerate(zip(resid, calls)):
            out = block(h, *args, **kwargs)
            resid[b] = out[0] if isinstance(out, tuple) else out
            if handle is not None:
                m = keep[b * batch_size : b * batch_size + h.shape[0]]
                xs.append(io["x"][m].float())
                ys.append(io["y"][m].float())
    finally:
        if handle is not None:
            handle.remove()
    return (torch.cat(xs), torch.cat(ys)) if capture else None


def fit_transcoder(x: Any, y: Any, *, width: int, k: int, steps: int, batch_size: int, lr: float,
                   seed: int = 0, auxk_alpha: float = 0.0, dead_after: int = 0) -> tuple[dict[str, Any], float]:
    """Train one TopK transcoder x -> y (module docstring); returns SAELens-named float32
    tensors (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec) and the FVU on all of
    x, y after training. ``auxk_alpha`` > 0 adds the AuxK loss for latents that fired on none
    of the last ``dead_after`` training tokens (default: 4 epochs' worth of tokens, at most
    half the steps; ``auxk_loss``)."""
    import torch

    if k > width:
        raise InputError(f"k {k} > width {width}", where="k")
    n, d_in = x.shape
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default initialisation of the encoder
    P = {
        "W_enc": ((torch.rand(d_in, width, generator=g) * 2 - 1) * bound).requires_grad_(),
        "b_enc": torch.zeros(width, requires_grad=True),
        "W_dec": torch.zeros(width, y.shape[1], requires_grad=True),
        "b_dec": y.mean(0).clone().requires_grad_(),
    }
    # the loss is the batch's sum||y - y_hat||^2 over the data's total variance per token
    # (sparsify's FVU with the whole set's variance): one learning rate fits every layer
    var = float((y - y.mean(0)).pow(2).sum(1).mean())
    bs = min(batch_size, n)
    dead_after = dead_after or min(4 * n, steps * bs // 2)
    since_fired = torch.zeros(width, dtype=torch.long)  # training tokens since each latent last fired
    opt = torch.optim.Adam(P.values(), lr=lr, fused=True)  # one kernel per step: 1.7x faster on CPU
    for _ in range(steps):
        i = torch.randint(0, n, (bs,), generator=g)
        xb, yb = x[i], y[i]
        pre = torch.relu(torch.addmm(P["b_enc"], xb, P["W_enc"]))
        vals, idx = torch.topk(pre, k, dim=1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, idx, vals)
        y_hat = torch.addmm(P["b_dec"], z, P["W_dec"])
        loss = (y_hat - yb).pow(2).sum() / (bs * max(var, 1e-12))
        if auxk_alpha > 0:
            fired = torch.zeros(width, dtype=torch.bool).index_fill_(0, idx[vals > 0].unique(), True)
            since_fired = torch.where(fired, 0, since_fired + bs)
            loss = loss + auxk_alpha * auxk_loss(pre, yb - y_hat, P["W_dec"], since_fired >= dead_after, var)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tensors = {name: p.detach().contiguous() for name, p in P.items()}
    return tensors, fvu_of(tensors, x, y, k)


def auxk_loss(pre: Any, err: Any, W_dec: Any, dead: Any, var: float) -> Any:
    """The auxiliary loss that revives dead latents (Gao et al. 2024, "Scaling and evaluating
    sparse autoencoders", appendix A.2; sparsify 1.3.3 ``SparseCoder.forward``): the top
    k_aux = d_out / 2 pre-activations among the dead latents reconstruct the main residual
    error (held constant), as an FVU scaled by min(dead / k_aux, 1)."""
    import torch

    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux = err.shape[1] // 2
    scale = min(n_dead / k_aux, 1.0)
    vals, idx = torch.topk(torch.where(dead[None], pre, -torch.inf), min(k_aux, n_dead), dim=1, sorted=False)
    e_hat = torch.zeros_like(pre).scatter(1, idx, vals) @ W_dec
    return scale * (e_hat - err.detach()).pow(2).sum() / (err.shape[0] * max(var, 1e-12))


def fit_relu_transcoder(x: Any, y: Any, *, width: int, steps: int, batch_size: int, lr: float, l1_coeff: float,
                        seed: int = 0) -> tuple[dict[str, Any], float]:
    """Train one ReLU transcoder x -> y: acts = relu(x @ W_enc + b_enc), y_hat = acts @ W_dec
    + b_dec, loss = FVU + l1_coeff * sum_i acts_i ||W_dec,i|| / sqrt(var) (the L1 penalty
    weighted by decoder norms of Anthropic's "Circuits Updates - April 2024", warmed up over
    the first 10% of steps). Unlike TopK, a latent turns on from 0, so a small change of the
    input moves the code continuously (what the graph's linear paths assume). W_dec starts
    as random rows of norm 0.1 * sqrt(var). Returns SAELens-named tensors and the FVU."""
    import torch

    n, d_in = x.shape
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d_in)
    var = max(float((y - y.mean(0)).pow(2).sum(1).mean()), 1e-12)
    W_dec = torch.randn(width, y.shape[1], generator=g)
    P = {
        "W_enc": ((torch.rand(d_in, width, generator=g) * 2 - 1) * bound).requires_grad_(),
        "b_enc": torch.zeros(width, requires_grad=True),
        "W_dec": (W_dec / W_dec.norm(dim=1, keepdim=True) * 0.1 * math.sqrt(var)).requires_grad_(),
        "b_dec": y.mean(0).clone().requires_grad_(),
    }
    bs = min(batch_size, n)
    opt = torch.optim.Adam(P.values(), lr=lr, fused=True)
    for step in range(steps):
        i = torch.randint(0, n, (bs,), generator=g)
        xb, yb = x[i], y[i]
        acts = torch.relu(torch.addmm(P["b_enc"], xb, P["W_enc"]))
        y_hat = torch.addmm(P["b_dec"], acts, P["W_dec"])
        warmup = min(1.0, (step + 1) / max(1, steps // 10))
        l1 = (acts * P["W_dec"].norm(dim=1)).sum() / math.sqrt(var)
        loss = ((y_hat - yb).pow(2).sum() / var + warmup * l1_coeff * l1) / bs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tensors = {name: p.detach().contiguous() for name, p in P.items()}
    return tensors, fvu_of(tensors, x, y, None)


def fvu_of(tensors: dict[str, Any], x: Any, y: Any, k: int | None, chunk: int = 4096) -> float:
    """sparsify's FVU of a TopK transcoder (ReLU when ``k`` is None) on (x, y):
    sum||y - y_hat||^2 / sum||y - mean y||^2."""
    import torch

    err = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            pre = torch.relu(x[i : i + chunk] @ tensors["W_enc"] + tensors["b_enc"])
            if k is None:
                y_hat = pre @ tensors["W_dec"] + tensors["b_dec"]
            else:
                v, j = torch.topk(pre, k, dim=1)
                y_hat = torch.einsum("nk,nkd->nd", v, tensors["W_dec"][j]) + tensors["b_dec"]
            err += float((y[i : i + chunk] - y_hat).double().pow(2).sum())
        tot = float((y.double() - y.double().mean(0)).pow(2).sum())
    return err / tot if tot > 0 else float("nan")


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``all`` (or None) or ``i,j,...`` -> sorted layer indices, each checked against the model."""
    if text is None or text.strip() == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise InputError(f"--layers must be 'all' or comma-separated integers, not {text!r}", where="layers") from None
    if not layers:
        raise InputError("--layers names no layer", where="layers")
    bad = [i for i in layers if i < 0 or i >= n_layers]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: the model has {n_layers} blocks", where="layers")
    return layers


def train_layers(cfg: TCTrainConfig, *, model_id: str | None = None) -> Iterator[LayerFit]:
    """Fit a transcoder for each of ``cfg.layers`` (all when None) on SmolLM2's training split."""
    import torch

    from saekit.harness.model import load_lm
    from saekit.harness.text import special_token_ids, token_set

    model, tok = load_lm(model_id)
    layers = parse_layers(None if cfg.layers is None else ",".join(map(str, cfg.layers)), len(_blocks(model)))
    ts = token_set(tok, n_tokens=cfg.n_tokens, context_size=cfg.context_size, corpus=cfg.corpus, split="train",
                   seed=cfg.seed)
    keep = ~torch.isin(ts.tokens, torch.tensor(special_token_ids(tok)))
    for layer, x, y in stream_mlp_io(model, ts.tokens, layers, keep=keep):
        t0 = time.perf_counter()
        if cfg.activation == "relu":
            tensors, fvu = fit_relu_transcoder(x, y, width=cfg.width, steps=cfg.steps, batch_size=cfg.batch_size,
                                               lr=cfg.lr, l1_coeff=cfg.l1_coeff, seed=cfg.seed + layer)
        else:
            tensors, fvu = fit_transcoder(x, y, width=cfg.width, k=cfg.k, steps=cfg.steps, batch_size=cfg.batch_size,
                                          lr=cfg.lr, seed=cfg.seed + layer, auxk_alpha=cfg.auxk_alpha)
        fit = LayerFit(layer=layer, tensors=tensors, train_fvu=fvu, seconds=time.perf_counter() - t0,
                       n_tokens=int(x.shape[0]))
        say(f"layer {layer}: train FVU {fvu:.4f} ({fit.seconds:.1f} s)")
        yield fit


_ADDED_FIELDS = {"auxk_alpha": 0.0, "activation": "topk", "l1_coeff": 0.1}
"""Fields added after sets were cached: left out of the key at their default, so those keep theirs."""


def cache_key(cfg: TCTrainConfig, weights_sha256: str | None) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if k not in _ADDED_FIELDS or v != _ADDED_FIELDS[k]}
    blob = json.dumps({"cfg": fields, "model": weights_sha256, "v": TC_TRAIN_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainedSet:
    """A trained transcoder set: its canonical folder (cached), and, when trained in this
    call, each layer's fit (empty when read from the cache)."""

    folder: Path
    fits: list[LayerFit]
    seconds: float  # this call: training (and activations) or reading the cache
    cached: bool
    version: Any = None  # registry VersionInfo when registered


def ensure_transcoder_set(cfg: TCTrainConfig, *, model_id: str | None = None) -> TrainedSet:
    """The canonical set folder of TopK transcoders trained with ``cfg`` on SmolLM2-135M,
    trained once per (cfg, model weights) and reused from SAEKIT_CACHE_DIR/transcoders/, as
    the demo SAE is (saekit.harness.train.ensure_demo_sae)."""
    from saekit.harness.model import DEFAULT_MODEL_ID, lm_info
    from saekit.harness.text import corpus_label
    from saekit.kernels.transcoder import Transcoder, TranscoderSet
    from saekit.registry.transcoder_set import save_set
    from saekit.schemas import Provenance, SAEConfig
    from saekit.schemas.settings import cache_dir
    from saekit.schemas.version import __version__

    if model_id not in (None, DEFAULT_MODEL_ID):
        raise InputError("transcoder training runs on SmolLM2-135M-Instruct (the default model) only", where="model")
    if cfg.activation not in ("topk", "relu"):
        raise InputError(f"activation must be 'topk' or 'relu', not {cfg.activation!r}", where="activation")
    relu = cfg.activation == "relu"
    if cfg.k > cfg.width and not relu:
        raise InputError(f"k {cfg.k} > width {cfg.width}", where="k")
    info = lm_info()
    t0 = time.perf_counter()
    which = "all" if cfg.layers is None else "L" + "-".join(map(str, cfg.layers))
    sparsity = f"relu-l1{cfg.l1_coeff:g}" if relu else f"k{cfg.k}"
    key = cache_key(cfg, info.weights_sha256)
    folder = cache_dir("transcoders") / f"smollm2-tc-{which}-w{cfg.width}-{sparsity}-{key}"
    if (folder / "set.json").is_file():
        return TrainedSet(folder, [], time.perf_counter() - t0, cached=True)
    kind = f"ReLU transcoders (576 -> {cfg.width} -> 576, L1 {cfg.l1_coeff:g})" if relu else \
        f"TopK transcoders (576 -> {cfg.width} -> 576, k {cfg.k})"
    say(f"training {kind} on {which} layers once; cached in {folder}")
    fits = []
    layers = {}
    for fit in train_layers(cfg):
        sae_cfg = SAEConfig(
            architecture="transcoder" if relu else "topk_transcoder", d_in=fit.tensors["W_enc"].shape[0],
            d_sae=cfg.width, d_out=fit.tensors["W_dec"].shape[1], k=None if relu else cfg.k, dtype="float32",
            model_name=DEFAULT_MODEL_ID,
            model_revision=info.revision, hook_name=f"model.layers.{fit.layer}.mlp", context_size=cfg.context_size,
            prepend_bos=True,
            provenance=Provenance(
                library="saekit", library_version=__version__, dataset=corpus_label(cfg.corpus) + " (train split)",
                tokens=cfg.steps * cfg.batch_size, seed=cfg.seed,
                source=f"saekit.harness.transcoder_train width={cfg.width} "
                       + (f"relu l1={cfg.l1_coeff:g}" if relu else f"k={cfg.k}")
                       + (f" auxk_alpha={cfg.auxk_alpha:g}" if cfg.auxk_alpha and not relu else "")
                       + f" steps={cfg.steps} lr={cfg.lr} batch={cfg.batch_size} train_fvu={fit.train_fvu:.4f}"),
        )
        layers[fit.layer] = Transcoder(sae_cfg, fit.tensors)
        fits.append(fit)
    save_set(TranscoderSet(layers, model_name=DEFAULT_MODEL_ID, model_revision=info.revision), folder)
    return TrainedSet(folder, fits, time.perf_counter() - t0, cached=False)


def train_transcoders(name: str | None, cfg: TCTrainConfig, *, alias: str | None = None) -> TrainedSet:
    """``saekit train transcoders``: the cached (or newly trained) set, registered as one
    version of ``name`` when given (identical content returns the existing version)."""
    from saekit.registry.refs import check_name
    from saekit.registry.store import register

    if name is not None:
        check_name(name)  # a bad name fails before any training
    trained = ensure_transcoder_set(cfg)
    if name is not None:
        sparsity = f"ReLU, L1 {cfg.l1_coeff:g}" if cfg.activation == "relu" else f"TopK, k {cfg.k}"
        trained.version = register(name, trained.folder, alias=alias,
                                   description=f"transcoders for SmolLM2-135M-Instruct, width {cfg.width}, {sparsity}")
    return trained
