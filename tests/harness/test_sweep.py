"""The sweep: the layers below the hook replayed are exact, and its results equal an
independent reference that runs every forward in full (the pre-sweep code path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.harness.test_tl_hooks import FAMILIES, HOOKS, _edit, _hf_config


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_replay_gives_the_full_forwards_bits(family: str) -> None:
    """At every hook of a middle block, on every family the hooks map: a spliced (and a
    zeroed) run from the hook with the layers below it replayed gives the same logits, bit for
    bit, as the full forward; the backward to the spliced activation too."""
    import transformers as tf

    from saekit.harness.activations import spliced
    from saekit.harness.sweep import Prefix

    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(_hf_config(family), dtype=torch.float32).eval().requires_grad_(False)
    tokens = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    layer = 1  # of 3: blocks below it and above it
    for kind in HOOKS:
        name = f"blocks.{layer}.{kind}"
        if kind == "hook_resid_mid" and getattr(hf.config, "use_parallel_residual", False):
            continue
        prefix = Prefix(hf, name)
        assert len(prefix.layers) >= 1, name  # the layers below the hook are replayed
        with torch.no_grad():
            acts = prefix.run_to_hook(tokens, name)
        for fn in (_edit, torch.zeros_like):
            x = fn(acts).detach().requires_grad_(True)
            with spliced(hf, name, lambda a: x):
                want = hf(tokens).logits
            want.sum().backward()
            g_want, x.grad = x.grad, None
            with prefix.replay(), spliced(hf, name, lambda a: x):
                got = hf(tokens).logits
            got.sum().backward()
            assert torch.equal(got, want), name
            assert torch.equal(x.grad, g_want), name


def test_a_hook_outside_the_blocks_runs_the_full_forward() -> None:
    import transformers as tf

    from saekit.harness.sweep import Prefix

    hf = tf.AutoModelForCausalLM.from_config(_hf_config("llama"), dtype=torch.float32).eval()
    assert Prefix(hf, "model.embed_tokens").layers == []
    assert len(Prefix(hf, "model.layers.1").layers) == 2  # a block's output: the block is below it
    assert len(Prefix(hf, "blocks.1.hook_resid_pre").layers) == 1
    assert len(Prefix(hf, "model.layers.1.mlp").layers) == 1


def _reference(sae, model, ts, hook, batch_size, special, k):
    """The pre-sweep path: per batch full clean, spliced and zero-ablated forwards for the
    CE/KL sums, and a second full spliced forward + backward for the latent statistics."""
    from saekit.harness.activations import captured, spliced
    from saekit.harness.downstream import spliced_loss
    from saekit.harness.latent_stats import LatentStats, attribution
    from saekit.harness.metrics import log_probs, per_token_ce, per_token_kl

    ctx = ts.context_size
    st = LatentStats.empty(sae.cfg.d_sae, k=k, samples=32, ctx=ctx, negatives=8, n_rows=ts.tokens.shape[0])
    ce = {"without": [], "with": [], "abl": [], "kl_with": [], "kl_abl": []}
    for r0 in range(0, ts.tokens.shape[0], batch_size):
        toks = ts.tokens[r0 : r0 + batch_size]
        mask = ~torch.isin(toks, special)
        with torch.inference_mode():
            with captured(model, hook) as box:
                clean = log_probs(model(toks).logits)
            acts = box["acts"]
            x_hat = sae.decode(sae.encode(acts.reshape(-1, acts.shape[-1]))).reshape(acts.shape)
            recon = torch.where(mask[..., None], x_hat, acts)
            with spliced(model, hook, lambda a: recon):
                lp_sae = log_probs(model(toks).logits)
            with spliced(model, hook, torch.zeros_like):
                lp_abl = log_probs(model(toks).logits)
        m = mask[:, :-1]
        ce["without"].append(float(per_token_ce(None, toks, logp=clean)[m].double().sum()))
        ce["with"].append(float(per_token_ce(None, toks, logp=lp_sae)[m].double().sum()))
        ce["abl"].append(float(per_token_ce(None, toks, logp=lp_abl)[m].double().sum()))
        ce["kl_with"].append(float(per_token_kl(clean, lp_sae)[mask].double().sum()))
        ce["kl_abl"].append(float(per_token_kl(clean, lp_abl)[mask].double().sum()))
        code, loss, g = spliced_loss(sae, model, toks, mask, hook, grad=True)
        st.update(code.values, code.indices, row0=r0, ctx=ctx, mask=mask.reshape(-1),
                  contrib=attribution(code.values, code.indices, sae.W_dec, g), loss=loss)
    return st, {k: sum(v) for k, v in ce.items()}


def test_sweep_equals_full_forwards(real_sae_dir: Path, lm) -> None:
    """Over several batches with a partial last one: the sweep's latent statistics (counts,
    sums, histograms, top and sampled windows, their captured values, losses and
    attributions, negatives) and CE/KL sums are the reference's, bit for bit."""
    from saekit.harness.metrics import SUMS
    from saekit.harness.sweep import sweep
    from saekit.harness.text import special_token_ids, token_set
    from saekit.registry.artifact import load_artifact

    model, tok = lm
    sae = load_artifact(real_sae_dir)
    ts = token_set(tok, n_tokens=7 * 24, context_size=24, seed=5)  # 7 windows: batches of 3, 3, 1
    special = torch.tensor(special_token_ids(tok))
    hook = sae.cfg.hook_name
    got = sweep(sae, model, ts, hook_name=hook, batch_size=3, special=special, k=3, negatives=2)
    want, ce = _reference(sae, model, ts, hook, 3, special, k=3)
    for name in ("fire_count", "act_sum", "act_max", "hist", "top_val", "top_row", "smp_pri", "smp_row", "smp_val",
                 "attr_sum", "attr_count", "n_tok", "top_seq", "smp_seq", "top_loss", "top_attr", "neg_rows",
                 "neg_fire"):
        torch.testing.assert_close(getattr(got.stats, name), getattr(want, name), rtol=0, atol=0, equal_nan=True,
                                   msg=name)
    rows = torch.stack([got.sums.rows[b] for b in range(got.batches)])
    col = {k: i for i, k in enumerate(SUMS)}
    for mine, theirs in (("ce_without", "without"), ("ce_with", "with"), ("ce_abl", "abl"), ("kl_with", "kl_with"),
                         ("kl_abl", "kl_abl")):
        assert sum(rows[:, col[mine]].tolist()) == ce[theirs], mine
    assert got.batches == 3 and got.sums.n_tokens == int(want.n_tok)
    assert torch.equal(got.sums.fire_count, want.fire_count)  # the metrics' counts: the same tokens


def _full_forward_ablated_loss(sae, model, hook: str, toks, special, L: int) -> float:
    """The reference for exact ablation: one window's summed next-token loss from a full
    forward with the SAE spliced in and latent ``L``'s decoder term removed where it fires
    (special tokens keep their activation and are not counted)."""
    import torch.nn.functional as F

    from saekit.harness.activations import spliced

    mask = ~torch.isin(toks, special)

    def ablated(a):
        code = sae.encode(a.reshape(-1, a.shape[-1]))
        x_hat = sae.decode(code).reshape(a.shape)
        dense = torch.zeros(code.values.shape[0], sae.cfg.d_sae).scatter(1, code.indices, code.values.float())
        own = (dense[:, L] * mask.reshape(-1)).reshape(1, -1, 1) * sae.W_dec[L].float()
        return torch.where(mask[..., None], x_hat - own, a)

    with torch.no_grad(), spliced(model, hook, ablated):
        logits = model(toks).logits
    ce = F.cross_entropy(logits[0, :-1].float(), toks[0, 1:], reduction="none") * mask[0, :-1]
    return float(ce.double().sum())


@pytest.mark.parametrize("keep,at", [("kept", "block"), ("recomputed", "block"), ("kept", "embedding")])
def test_exact_ablations_from_the_hook_equal_full_forwards(real_sae_dir: Path, lm, monkeypatch, keep: str,
                                                          at: str) -> None:
    """Each (latent, window) ablated from the hook, the layers below it and the SAE run once per
    window (kept, or computed again for each batch when nothing may be kept), gives the loss of
    an independent full forward with the latent's decoder term removed where it fires, bit for
    bit; several latents share windows and batches of 3 end in a partial one. A hook outside
    the blocks (the embedding: nothing to replay) runs full forwards."""
    from saekit.harness import downstream as D
    from saekit.harness.sweep import sweep
    from saekit.harness.text import special_token_ids, token_set
    from saekit.registry.artifact import load_artifact

    model, tok = lm
    sae = load_artifact(real_sae_dir)
    ts = token_set(tok, n_tokens=5 * 24, context_size=24, seed=3)
    special = torch.tensor(special_token_ids(tok))
    hook = sae.cfg.hook_name if at == "block" else "model.embed_tokens"
    if keep == "recomputed":
        monkeypatch.setattr(D._AtHook, "KEEP_BYTES", 0)
    st = sweep(sae, model, ts, hook_name=hook, batch_size=3, special=special, metrics=False, k=3).stats
    latents = [int(L) for L in torch.argsort(st.fire_count, descending=True, stable=True)[:4]]
    got = D.exact_ablations(sae, model, ts, st, latents, hook_name=hook, batch_size=3, special=special, max_rows=2)
    assert sum(got[L]["rows"] for L in latents) == 8  # 8 jobs over at most 5 windows: shared windows
    for L in latents:
        want = 0.0
        for r, _ in st.top(L)[:2]:
            want += _full_forward_ablated_loss(sae, model, hook, ts.tokens[r : r + 1], special, L)
        assert got[L]["ablated"] == want, (L, got[L]["ablated"] - want)


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "pythia"])
@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"])
def test_exact_ablations_from_the_hook_on_other_families(family: str, hook: str) -> None:
    """Off SmolLM2: a random JumpReLU SAE on tiny GPT-2, Gemma 2 and Pythia (parallel
    residual), at a block's output and at its MLP output (carried into the residual): the
    runs from the hook give each (latent, window) the loss of a full forward, bit for bit,
    over 5 windows in batches of 2 (a partial last one)."""
    import transformers as tf

    from saekit.harness import downstream as D
    from saekit.harness.sweep import sweep
    from saekit.harness.text import TokenSet
    from tests.kernels.kernel_helpers import make_sae

    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(_hf_config(family), dtype=torch.float32).eval().requires_grad_(False)
    d = hf.config.hidden_size if hasattr(hf.config, "hidden_size") else hf.config.n_embd
    sae = make_sae("jumprelu", d, 48, None, seed=1)
    toks = torch.randint(1, 97, (5, 12), generator=torch.Generator().manual_seed(2))
    toks[:, 0] = 0  # a special token at each window's start: kept out of the splice
    ts = TokenSet(tokens=toks, source="random", corpus="random", split="all", seed=0, prepend_bos=True)
    special = torch.tensor([0])
    st = sweep(sae, hf, ts, hook_name=hook, batch_size=2, special=special, metrics=False, k=3).stats
    latents = [int(L) for L in torch.argsort(st.fire_count, descending=True, stable=True)[:3]]
    got = D.exact_ablations(sae, hf, ts, st, latents, hook_name=hook, batch_size=2, special=special, max_rows=2)
    for L in latents:
        want = 0.0
        for r, _ in st.top(L)[:2]:
            want += _full_forward_ablated_loss(sae, hf, hook, toks[r : r + 1], special, L)
        assert got[L]["ablated"] == want, (L, got[L]["ablated"] - want)
        assert got[L]["rows"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_into_a_kept_buffer_are_the_heads_bits(family: str, dtype) -> None:
    """The no-grad runs' logits written into one reused buffer equal the model's own, bit for
    bit, on every family, in float32 and bf16 (Gemma's soft-capping still applies after the head); a run with
    autograd falls back to the head's own product, so its backward still works."""
    import transformers as tf

    from saekit.harness.metrics import logits_into

    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(_hf_config(family), dtype=dtype).eval().requires_grad_(False)
    work: dict = {}
    for seed in (1, 2):  # a second batch writes into the first one's memory
        tokens = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = hf(tokens).logits
            with logits_into(hf, work, "logits"):
                got = hf(tokens).logits
        assert torch.equal(got, want), family
        if seed == 1:
            ptr = work["logits"].data_ptr()
    assert work["logits"].data_ptr() == ptr
    emb = hf.get_input_embeddings()(tokens).detach().requires_grad_(True)
    with logits_into(hf, work, "logits"):
        hf(inputs_embeds=emb).logits.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
