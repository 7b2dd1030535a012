"""Every (model, hook) of SAELens' catalogue is resolved by saekit or refused in one line.

The installed sae-lens' ``pretrained_saes.yaml`` lists each release's model; the hook of each
SAE is in the SAE's cfg.json on the Hub, which SAELens' loaders build from the release's
repo and folder names for most conversion functions (sae_lens/loading/pretrained_sae_loaders.py,
6.54: ``get_gemma_2_config_from_hf``, ``get_gemma_3_config_from_hf``, ``get_qwen_scope_...``;
the ``sae_lens`` format names its SAEs by their hook). :func:`catalogue_hook` follows those
rules; SAEs whose hook only the Hub's files tell are counted apart.

Each pair resolves on a model of its family (the HF module tree on the meta device, deep
enough for the pair's layer) to a site of a hook kind that test_tl_hooks checks against
TransformerLens on that family, or is refused with one InputError line naming why: the
family is not mapped, or the hook kind is not supported. Never another error.
"""

from __future__ import annotations

import collections
import re
from types import SimpleNamespace

import pytest

from tests.harness.test_tl_hooks import HOOKS, _hf_config

# model_type of each catalogue model's config.json on the Hub (what the check loads)
FAMILY_OF = [
    (r"gpt2", "gpt2"), (r"EleutherAI/pythia-", "gpt_neox"), (r"google/gemma-2-", "gemma2"),
    (r"google/gemma-(2b|7b)", "gemma"), (r"google/gemma-3-(270m|1b)", "gemma3_text"),
    (r"google/gemma-3-", "gemma3"),  # 4b/12b/27b: Gemma3ForConditionalGeneration (text + vision)
    (r"meta-llama/|deepseek-ai/DeepSeek-R1-Distill-Llama", "llama"), (r"mistralai/Mistral-", "mistral"),
    (r"Qwen/Qwen2\.5-", "qwen2"), (r"Qwen/Qwen3-30B-A3B", "qwen3_moe"), (r"Qwen/Qwen3\.5-35B-A3B", "qwen3_5_moe"),
    (r"Qwen/Qwen3\.5-", "qwen3_5"), (r"Qwen/Qwen3-", "qwen3"), (r"openai/gpt-oss", "gpt_oss"),
]
# saekit's family -> the tiny config of test_tl_hooks (the oracle-tested families)
TINY = {"gpt2": "gpt2", "gpt_neox": "pythia", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2",
        "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3-multimodal"}
_HOOK = re.compile(r"(?:.*/)?(blocks\.\d+\.(?:[a-z0-9]+\.)?hook_[a-z]+(?:_[a-z]+)*|hook_embed)")


def catalogue_hook(entry: dict, repo: str, conversion: str | None) -> str | None:
    """The hook SAELens' loader gives this SAE, where the catalogue's names determine it."""
    sid, path = entry["id"], str(entry["path"])
    if conversion == "connor_rob_hook_z":  # ids blocks.N.hook_z; the cfg's act_name is blocks.N.attn.hook_z
        return sid.replace(".hook_z", ".attn.hook_z")
    m = _HOOK.match(sid)
    if m:  # sae_lens-format ids (blocks.8.hook_resid_pre_768: the 768-wide SAE at that hook)
        return m.group(1)
    layer = re.search(r"layer_?(\d+)|^l(\d+)|/L(\d+)R$", sid if conversion != "llama_scope_r1_distill" else path)
    n = next((g for g in layer.groups() if g), None) if layer else None
    if conversion == "gemma_2":
        if "res" in repo:
            return "hook_embed" if "embedding" in path else f"blocks.{n}.hook_resid_post"
        return f"blocks.{n}.hook_mlp_out" if "mlp" in repo else f"blocks.{n}.attn.hook_z"
    if conversion == "gemma_3":
        for word, kind in (("resid_post", "hook_resid_post"), ("attn_out", "attn.hook_z"),
                           ("mlp_out", "hook_mlp_out"), ("transcoder", "hook_mlp_in"), ("clt", "hook_mlp_in")):
            if word in path:
                return f"blocks.{n}.{kind}"
    if conversion == "gemma_2_transcoder":
        return f"blocks.{n}.ln2.hook_normalized"
    if conversion == "mwhanna_transcoder":
        return f"blocks.{n}.mlp.hook_in"
    if conversion == "llama_scope":  # Llama Scope's L{n}{R,A,M}: resid_post, attn_out, mlp_out
        site = re.match(r"l\d+(r|a|m)_", sid)
        kinds = {"r": "resid_post", "a": "attn_out", "m": "mlp_out"}
        return f"blocks.{n}.hook_{kinds[site.group(1)]}" if site else None
    if conversion in ("llama_scope_r1_distill", "qwen_scope", "goodfire", "dictionary_learning_1", "deepseek_r1",
                      "temporal"):
        return f"blocks.{n}.hook_resid_post" if n is not None else None
    return None  # mntss_clt_layer_transcoder: the input hook is in a Hub file


def catalogue_pairs() -> tuple[dict[tuple[str, str], int], int]:
    """{(model, hook): number of SAEs}, and the number of SAEs whose hook only the Hub tells."""
    from saekit.registry.hub_source import saelens_catalogue

    pairs: dict[tuple[str, str], int] = collections.Counter()
    unknown = 0
    for rel in saelens_catalogue().values():
        for entry in rel["saes"]:
            hook = catalogue_hook(entry, rel["repo_id"], rel.get("conversion_func"))
            if hook is None:
                unknown += 1
            else:
                pairs[(rel["model"], hook)] += 1
    return pairs, unknown


def family_of(hub: str) -> str:
    found = [fam for pattern, fam in FAMILY_OF if re.match(pattern, hub)]
    assert found, f"no family for {hub!r}: add it to FAMILY_OF"
    return found[0]


def _model(family: str, n_layers: int):
    """The HF module tree of ``family`` with ``n_layers`` blocks (meta device: no memory);
    for a family saekit does not map, only its config's model_type."""
    import torch
    import transformers as tf

    if family not in TINY:
        return SimpleNamespace(config=SimpleNamespace(model_type=family))
    config = _hf_config(TINY[family])
    text = getattr(config, "text_config", config)
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(text, key):
            setattr(text, key, n_layers)
    if getattr(text, "layer_types", None):
        text.layer_types = ((["sliding_attention"] * 5 + ["full_attention"]) * n_layers)[:n_layers]
    with torch.device("meta"):
        return tf.AutoModelForCausalLM.from_config(config)


def test_every_catalogue_pair_is_resolved_or_refused_in_one_line() -> None:
    from saekit.harness.hooks import hub_id, site
    from saekit.schemas import InputError

    pairs, unknown = catalogue_pairs()
    assert len(pairs) > 1000 and sum(pairs.values()) > 13000
    depth: dict[str, int] = collections.defaultdict(int)
    for (model, hook), _ in pairs.items():
        layer = re.match(r"blocks\.(\d+)\.", hook)
        depth[model] = max(depth[model], int(layer.group(1)) + 1 if layer else 1)
    models = {m: _model(family_of(hub_id(m)), depth[m]) for m in depth}
    counts: dict[tuple[str, str, str], int] = collections.Counter()
    for (model, hook), n_saes in sorted(pairs.items()):
        family = family_of(hub_id(model))
        kind = re.sub(r"^blocks\.\d+\.", "", hook)
        try:
            where = site(models[model], hook)
        except InputError as err:
            line = str(err)
            assert "\n" not in line and line, (model, hook)
            reason = ("family" if "not mapped for model type" in line else "kind" if "is not supported" in line
                      else "parallel" if "in parallel" in line else None)
            assert reason, (model, hook, line)
            # refused only where saekit has no TL-checked mapping: never a mapped family's checked kind
            assert family not in TINY or kind not in HOOKS or reason == "parallel", (model, hook, line)
            counts[(family, kind, f"refused ({reason})")] += n_saes
            continue
        # resolved: only hook kinds and families that test_tl_hooks checks against TransformerLens
        assert family in TINY and kind in HOOKS, (model, hook, where)
        models[model].get_submodule(where.module)  # the site is a module of that model
        counts[(family, kind, "supported")] += n_saes
    by_outcome = collections.Counter()
    for (family, kind, outcome), n in sorted(counts.items()):
        print(f"{family:12s} {kind:22s} {outcome:18s} {n:6d} SAEs")
        by_outcome[outcome.split(" ")[0]] += n
    print(f"pairs: {len(pairs)}; SAEs: {dict(by_outcome)}; hook only on the Hub: {unknown}")


@pytest.mark.parametrize("family", sorted(TINY))
def test_first_middle_last_layers_resolve_and_beyond_is_refused(family: str) -> None:
    """Every hook kind at layer 0, a middle and the last layer resolves to a module of that
    block (the last block's resid_post is the block's output, never the final norm's); one
    past the last is refused in one line."""
    from saekit.harness.hooks import LAYOUTS, site
    from saekit.schemas import InputError

    model = _model(family, 5)
    layers = LAYOUTS[family].layers
    for kind in HOOKS:
        for layer in (0, 2, 4):
            try:
                where = site(model, f"blocks.{layer}.{kind}")
            except InputError as err:
                assert family == "gpt_neox" and kind == "hook_resid_mid" and "parallel" in str(err)
                continue
            assert where.module == f"{layers}.{layer}" or where.module.startswith(f"{layers}.{layer}."), where
        with pytest.raises(InputError, match="the model has 5 blocks"):
            site(model, f"blocks.5.{kind}")
