"""saekit's metrics agree with the real sae-lens package on the same SAE and token batches.

sae-lens' evals take a HookedRootModule; sae-lens ships ``HookedProxyLM`` (sae_lens/
load_model.py), which wraps a Hugging Face AutoModelForCausalLM, so sae-lens'
``run_evals`` runs end to end here on the same SmolLM2 model, the same hook module and the
same token batches (a minimal stand-in for its ActivationsStore hands them out), with
sae-lens' own SAE class (``SAE.load_from_disk``) for encode/decode. float32, CPU.

sae-lens must read saekit's cfg.json metadata as it is (hook_name, model_name).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

REL = 1e-3


class _Batches:
    """What run_evals needs of sae-lens' ActivationsStore: the same token batches, in order."""

    def __init__(self, tokens, batch_size):
        self.tokens, self.store_batch_size_prompts, self.context_size = tokens, batch_size, tokens.shape[1]
        self.i = 0

    def get_batch_tokens(self, n):
        out = self.tokens[self.i : self.i + n]
        self.i += n
        return out

    def reset_input_dataset(self):
        self.i = 0


def test_metrics_agree_with_sae_lens_run_evals(checked, real_sae_dir, lm):
    import torch
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.load_model import HookedProxyLM
    from sae_lens.training.activation_scaler import ActivationScaler

    from saekit.harness.text import token_set
    from saekit.schemas import BenchmarkRecord

    rec = BenchmarkRecord.model_validate_json(checked.record_path.read_text())
    cfg = rec.eval_config
    model, tok = lm
    ts = token_set(tok, n_tokens=cfg["n_tokens"], context_size=cfg["context_size"], corpus=cfg["corpus"],
                   split=cfg["split"], seed=cfg["seed"], prepend_bos=cfg["prepend_bos"])
    assert ts.fingerprint == rec.data.fingerprint  # the very tokens saekit evaluated
    hook = cfg["hook_name"]
    batch = cfg["batch_size"]
    n_batches = ts.tokens.shape[0] // batch

    sl_sae = SaeLensSAE.load_from_disk(str(real_sae_dir), device="cpu")
    assert sl_sae.cfg.metadata.hook_name == hook  # sae-lens reads saekit's v6 metadata
    module = model.get_submodule(hook)
    hooks_before = dict(module._forward_hooks)
    try:
        proxy = HookedProxyLM(model, tok, hook_names=[hook])
        with torch.no_grad():
            sl, _ = run_evals(
                sl_sae,
                _Batches(ts.tokens, batch),
                proxy,
                ActivationScaler(),
                get_eval_everything_config(
                    batch_size_prompts=batch,
                    n_eval_reconstruction_batches=n_batches,
                    n_eval_sparsity_variance_batches=n_batches,
                ),
                exclude_special_tokens=True,
            )
    finally:
        module._forward_hooks.clear()
        module._forward_hooks.update(hooks_before)

    theirs = {k: v for cat in sl.values() for k, v in cat.items()}
    for name in ("explained_variance", "mse", "cossim", "l0", "l1", "ce_loss_score", "kl_div_score",
                 "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation", "kl_div_with_sae"):
        assert rec.metric(name) == pytest.approx(theirs[name], rel=REL), name
