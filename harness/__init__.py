"""saekit.harness: check an SAE against a real language model.

    activations  a Hugging Face causal LM hooked at a named module, or stored shards
    text         real English token sets, each pinned by the sha256 of its token ids
    metrics      SAELens' reconstruction, sparsity and downstream (CE/KL) metrics
    cards        feature cards from a check, annotation merge, card verification
    gate         a GatePolicy applied to a BenchmarkRecord
    check        the whole check: metrics + cards + record + gate, logged on the registry
    train        a small TopK SAE on real SmolLM2 activations (demo and tests)
    llm_client   one chat interface: OpenAI-compatible endpoints, the local model, a request cache
    explain      explanations of latents from their cards' activating examples (cards explain)

Heavy imports (torch, transformers) happen inside these modules, never here.
"""
