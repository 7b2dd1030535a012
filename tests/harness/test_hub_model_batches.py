"""bfloat16 and batches with a partial last one, through ``saekit.activations`` (CPU; issue
20, hidden cases; the check's counterpart: tests/security/test_hub_check_cases.py).

- ``saekit.activations`` in bfloat16 returns bfloat16 activations within bfloat16's rounding
  of TransformerLens' float32 ones; in float32, five windows at once equal the same windows in
  batches of 2, 2 and 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.test_tl_hooks import HOOKS, tiny_pair


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bf16_and_partial_batches_through_activations(family: str, tmp_path: Path) -> None:
    import torch

    import saekit

    hf, tl = tiny_pair(family, tmp_path)
    tokens = torch.randint(0, 97, (5, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, cache = tl.run_with_cache(tokens)
    bf16 = tiny_pair(family, tmp_path / "bf16")[0].to(torch.bfloat16)
    worst = {}
    for kind in HOOKS:
        name = f"blocks.2.{kind}"
        whole = saekit.activations(hf, name, tokens)
        parts = torch.cat([saekit.activations(hf, name, tokens[i:i + 2]) for i in range(0, 5, 2)])
        torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5, msg=name)  # 2, 2 and a partial 1
        want = cache[name].flatten(-2) if kind == "attn.hook_z" else cache[name]
        got = saekit.activations(bf16, name, tokens)
        assert got.dtype == torch.bfloat16, name
        rel = ((got.float() - want).norm() / want.norm()).item()
        assert rel < 0.03, (name, rel)  # bfloat16 keeps 8 bits of mantissa; 3 blocks of rounding
        worst[kind] = rel
    print(f"{family} bfloat16: largest relative |saekit - TL float32| = {max(worst.values()):.2e}")
