"""The check's one sweep over the token windows: every consumer fed from one batch loop.

Per batch (one special-token mask, this rank's share of the batches, one progress bar):

1. the clean forward, which records the activation at the hook and the output of the layers
   below it (``Prefix``);
2. the SAE's code and reconstruction, once;
3. from the hook on, the spliced run (reconstruction in at the non-special positions; with
   ``grad`` one backward of its summed next-token loss: every latent's attribution) and the
   zero-ablated run; the layers below the hook are not run again (``Prefix.replay``);
4. the consumers: the metrics' sums (saekit.harness.metrics.MetricSums) and every latent's
   statistics, examples, non-activating windows and captured windows
   (saekit.harness.latent_stats.LatentStats).

Replaying the layers below the hook is exact: the layers above it get the same input
tensors as in a full forward, so the logits are the same bits. It needs the hook inside the
model's stack of blocks (every family saekit.harness.hooks maps, and module paths under it);
a hook elsewhere (the embedding, the final norm) runs the full forward for each run instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from saekit.harness.activations import _Stop, captured, spliced
from saekit.harness.hooks import site
from saekit.harness.latent_stats import LatentStats, attribution
from saekit.harness.metrics import (MetricSums, SUMS, batch_sums, downstream_sums, log_probs, logits_into,
                                    per_token_ce)
from saekit.harness.text import TokenSet
from saekit.schemas import InputError
from saekit.schemas.console import Progress

SAMPLES = 32  # windows sampled per latent (bottom-k sketch) for the quantile examples
NEGATIVE_CANDIDATES = 4  # candidate windows tracked per non-activating window wanted
# the sweep captures the kept windows' values while they take at most this much memory
# (d_sae x (k + SAMPLES) x context float32: 87 MB for the demo SAE); beyond it card assembly
# re-runs the example windows instead
CAPTURE_BYTES = 1 << 30


class Prefix:
    """The blocks below the hook: recorded by a forward (their last output), then replayed
    by the runs from the hook (each block below returns the recorded output instead of
    computing). ``layers`` is empty where the hook is not inside the stack of blocks."""

    def __init__(self, model: Any, hook_name: str):
        import torch

        where = site(model, hook_name)
        self.model, self.layers = model, []
        parts = where.module.split(".")
        for i in range(1, len(parts)):
            if not parts[i].isdigit():
                continue
            try:
                stack = model.get_submodule(".".join(parts[:i]))
            except AttributeError:
                continue
            if isinstance(stack, torch.nn.ModuleList):
                # the block holding the site is below it too when the site is its output
                whole = i == len(parts) - 1 and where.read == "output" and where.carry is None
                self.layers = list(stack)[: int(parts[i]) + int(whole)]
                break
        self.out: Any = None

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Within the block, a forward records the last layer below the hook's output."""
        if not self.layers:
            yield
            return

        def keep(_m: Any, _a: Any, out: Any) -> None:
            self.out = out

        handle = self.layers[-1].register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Within the block, the layers below the hook return the recorded output (the
        model's embedding and masks still run: they are cheap)."""
        out = self.out

        def recorded(*_a: Any, **_k: Any) -> Any:
            return out

        for layer in self.layers:
            layer.forward = recorded
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward

    def run_to_hook(self, toks: Any, hook_name: str) -> Any:
        """The activation [b, ctx, d] at the hook (recording the layers below it); the
        layers after it are not run."""
        with self.recording(), captured(self.model, hook_name, stop=True) as box:
            try:
                self.model(toks)
            except _Stop:
                pass
        if "acts" not in box:
            raise InputError(f"hook {hook_name!r} did not run in the forward pass", where="hook_name")
        return box["acts"]


@dataclass
class Sweep:
    """What the sweep produced."""

    sums: MetricSums | None
    """The metrics' sums over every batch (None without ``metrics``)."""
    stats: LatentStats | None
    """Every latent's statistics, reduced over the ranks (None without ``cards``)."""
    batches: int = 0
    """Batches in the token set (all ranks)."""


def sweep(
    sae: Any, model: Any, tokens: TokenSet, *, hook_name: str, batch_size: int, special: Any,
    batches: list[int] | None = None, metrics: bool = True, downstream: bool = True, cards: bool = True,
    grad: bool = True, k: int = 5, samples: int = SAMPLES, negatives: int = 0, windows: bool = True,
    desc: str = "sweep",
) -> Sweep:
    """One pass over ``tokens`` (``batches``: this rank's batch indices; all by default).

    ``metrics``: the metrics' sums (with ``downstream`` the clean, spliced and zero-ablated
    runs for CE and KL). ``cards``: every latent's LatentStats (``k`` top windows, ``samples``
    sampled windows, ``negatives`` non-activating windows wanted, ``windows``: capture the
    kept windows' values while they take at most CAPTURE_BYTES); with ``grad`` (and
    ``downstream``) the spliced run's backward gives every latent's attribution and each top
    window's loss. Sums are reduced over the torch.distributed ranks."""
    import torch

    ctx = tokens.context_size
    n_rows = tokens.tokens.shape[0]
    n_batches = -(-n_rows // batch_size)
    todo = list(range(n_batches)) if batches is None else list(batches)
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    grad = grad and downstream and cards
    spliced_run = downstream and (metrics or grad)
    capture = windows and d_sae * (k + samples) * ctx * 4 <= CAPTURE_BYTES
    stats = LatentStats.empty(d_sae, k=k, samples=samples, ctx=ctx if capture else None,
                              negatives=negatives * NEGATIVE_CANDIDATES, n_rows=n_rows) if cards else None
    sums = MetricSums(d_sae) if metrics else None
    prefix = Prefix(model, hook_name)
    work: dict = {}  # the no-grad runs' logits and downstream_sums' buffers, reused by every batch
    dev = next(model.parameters()).device
    special = special.to(dev)
    with Progress(desc, total=len(todo)) as bar:
        for b in todo:
            r0 = b * batch_size
            toks = tokens.tokens[r0 : r0 + batch_size].to(dev)
            mask = ~torch.isin(toks, special)
            rows = toks.shape[0]
            with torch.no_grad():
                if metrics and downstream:
                    with prefix.recording(), captured(model, hook_name) as box, logits_into(model, work, "clean"):
                        clean = model(toks).logits
                    acts = box["acts"]
                else:
                    acts = prefix.run_to_hook(toks, hook_name)
                flat = acts.reshape(-1, d_in)
                fmask = mask.reshape(-1)
                code = sae.encode(flat)
                x_hat = sae.decode(code)
            row = None
            if metrics:
                with torch.no_grad():
                    kept = code.values * fmask[:, None].to(code.values.dtype)
                    row = batch_sums(flat[fmask], x_hat[fmask], code.values[fmask])
                    batch_stats = sae.eval_batch(flat[fmask])
            contrib = loss = None
            if spliced_run:
                recon = torch.where(mask[..., None], x_hat.reshape(acts.shape).to(acts.dtype), acts).detach()
                if grad:
                    recon.requires_grad_(True)
                with torch.set_grad_enabled(grad), prefix.replay(), spliced(model, hook_name, lambda a: recon):
                    # one log-softmax serves the backward's loss and the metrics (cross_entropy
                    # is this log-softmax and a pick per row: the same bits)
                    lp_sae = log_probs(model(toks).logits)
                    if grad:
                        ce = per_token_ce(None, toks, logp=lp_sae)
                        ce = ce * mask[:, :-1]  # CE at t predicts t+1; counted where the input token t is not special
                        ce.sum().backward()
                        loss = ce.detach().double().sum(1)
                        contrib = attribution(code.values, code.indices, sae.W_dec, recon.grad.reshape(rows * ctx, -1))
                    lp_sae = lp_sae.detach()
                if metrics:
                    with torch.no_grad():
                        with (prefix.replay(), spliced(model, hook_name, torch.zeros_like),
                              logits_into(model, work, "abl")):
                            abl = model(toks).logits
                        downstream_sums(row, toks, mask, clean, lp_sae, abl, work)
                        del clean, lp_sae, abl
            if metrics:
                sums.add(b, row, batch_stats, (kept.reshape(rows, -1), code.indices.reshape(rows, -1)))
            if cards:
                stats.update(code.values, code.indices, row0=r0, ctx=ctx, mask=fmask, contrib=contrib, loss=loss)
            bar.update()
    if sums is not None:
        sums.all_reduce(n_batches, len(SUMS) + 2 * d_in)
    return Sweep(sums=sums, stats=stats.all_reduce() if stats is not None else None, batches=n_batches)
