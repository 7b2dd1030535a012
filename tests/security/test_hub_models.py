"""Language models from the Hub, pinned: the real CLI in a child process, against the loopback
Hub through the real huggingface_hub client.

- A bad ``--device`` / ``--dtype`` is one line, exit 2, before the SAE or the model loads.
- An SAE whose metadata names its model by a SAELens alias (``pythia-70m-deduped``) and a
  TransformerLens hook is checked on the model the loopback Hub serves: downloaded, pinned to
  the commit, its weights' sha256 recorded; after the repo moves on (a new commit on main),
  a re-check from the record (offline: HF_HUB_OFFLINE=1) and a re-registered SAE that pins
  the model revision still run on the pinned commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sec_helpers import log_measure, saekit

MODEL_REPO = "EleutherAI/pythia-70m-deduped"  # what SAELens' name pythia-70m-deduped means (TL's table)


def _sae_folder(folder: Path, *, model_name: str, hook_name: str, d_in: int, model_revision: str | None = None,
                hook_head_index: int | None = None, metadata: dict | None = None) -> Path:
    import torch

    from saekit.kernels import SAE
    from saekit.registry.artifact import save_artifact
    from saekit.schemas import SAEConfig

    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(32, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    tensors = {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(32), "W_dec": W_dec, "b_dec": torch.zeros(d_in)}
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=32, k=4, model_name=model_name, hook_name=hook_name,
                    model_revision=model_revision, hook_head_index=hook_head_index, metadata=metadata or {})
    save_artifact(SAE(cfg, tensors), folder)
    return folder


def _tiny_pythia(folder: Path, seed: int) -> Path:
    """A 2-block GPT-NeoX (parallel attention, as Pythia) with a small byte-level BPE tokenizer."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def f(x): return x + 1", "The quick brown fox jumps over the lazy dog."] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = tf.GPTNeoXConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.25,
                              use_parallel_residual=True, bos_token_id=0, eos_token_id=0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def hub(tmp_path):
    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hubroot")
    yield server
    server.stop()


@pytest.mark.parametrize("args,match", [
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda"], "sees no CUDA device"),
    (["--device", "cuda:x"], "unknown device"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
])
def test_bad_device_or_dtype_is_one_line_before_loading(tmp_path, args, match):
    import torch

    if args[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch has CUDA: --device cuda is valid here")
    sae = _sae_folder(tmp_path / "sae", model_name="no-such-org/never-fetched", hook_name="blocks.0.hook_resid_pre",
                      d_in=8)
    r = saekit("check", str(sae), *args, "--no-log", "--out", str(tmp_path / "out"), home=tmp_path / "home",
               cwd=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    log_measure(f"check {' '.join(args)}", r)
    line = r.one_line_error(2)
    assert match in line, line
    assert not (tmp_path / "out").exists()  # nothing written
    assert r.seconds < 30 and r.peak_mib < 1500  # no model, no Hub call (the endpoint is dead)


def test_a_bad_model_id_is_one_line(tmp_path):
    sae = _sae_folder(tmp_path / "sae", model_name="pythia-70m-deduped", hook_name="blocks.0.hook_resid_pre", d_in=8)
    r = saekit("check", str(sae), "--model", "not a/valid..id@main", "--no-log", "--out", str(tmp_path / "out"),
               home=tmp_path / "home", cwd=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    line = r.one_line_error(2)
    assert "not a/valid..id@main: cannot fetch the language model" in line, line
    assert not (tmp_path / "out").exists()


def _check(tmp_path: Path, hub, *args: str, **env: str):
    r = saekit("check", *args, "--tokens", "128", "--context", "16", "--no-cards", "--no-log",
               home=tmp_path / "home", cwd=tmp_path, timeout=240, HF_ENDPOINT=hub.url, **env)
    assert r.rc == 0, r.err[-3000:]
    return r


def test_check_fetches_pins_and_keeps_the_model_commit(tmp_path, hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo(MODEL_REPO)
    api.upload_folder(folder_path=str(_tiny_pythia(tmp_path / "m1", seed=1)), repo_id=MODEL_REPO)
    pinned = api.model_info(MODEL_REPO).sha
    weights = hashlib.sha256((tmp_path / "m1" / "model.safetensors").read_bytes()).hexdigest()
    sae = _sae_folder(tmp_path / "sae", model_name="pythia-70m-deduped", hook_name="blocks.1.ln2.hook_normalized",
                      d_in=32)

    r = _check(tmp_path, hub, str(sae), "--out", str(tmp_path / "c1"))
    log_measure("check, model fetched from the loopback Hub", r)
    rec = json.loads((tmp_path / "c1" / "eval.json").read_text())
    assert rec["model"] == {"id": MODEL_REPO, "revision": pinned, "weights_sha256": weights,
                            "hook_name": "blocks.1.ln2.hook_normalized", "weights": "pythia-70m-deduped, float32"}
    assert rec["check_config"]["model_id"] == f"{MODEL_REPO}@{pinned}"
    mse = rec["eval_result_metrics"]["reconstruction_quality"]

    # the repo moves on: other weights on main
    api.upload_folder(folder_path=str(_tiny_pythia(tmp_path / "m2", seed=2)), repo_id=MODEL_REPO)
    assert api.model_info(MODEL_REPO).sha != pinned

    r = _check(tmp_path, hub, "--from-record", str(tmp_path / "c1" / "eval.json"), "--out", str(tmp_path / "c2"),
               HF_HUB_OFFLINE="1")
    log_measure("re-check from the record, offline, after the repo moved on", r)
    again = json.loads((tmp_path / "c2" / "eval.json").read_text())
    assert again["model"] == rec["model"]
    assert again["eval_result_metrics"]["reconstruction_quality"] == mse  # the same weights, the same numbers

    # a re-registered SAE that pins the model revision: the pinned commit, not main
    pinned_sae = _sae_folder(tmp_path / "sae2", model_name="pythia-70m-deduped", hook_name="blocks.1.hook_resid_pre",
                             d_in=32, model_revision=pinned)
    r = _check(tmp_path, hub, str(pinned_sae), "--out", str(tmp_path / "c3"), "--dtype", "bfloat16")
    third = json.loads((tmp_path / "c3" / "eval.json").read_text())
    assert third["model"]["revision"] == pinned and third["model"]["weights_sha256"] == weights
    assert third["check_config"]["dtype"] == "bfloat16" and third["eval_config"]["llm_dtype"] == "bfloat16"


def test_a_one_head_sae_is_refused_before_the_model_loads(tmp_path):
    sae = _sae_folder(tmp_path / "sae", model_name="pythia-70m-deduped", hook_name="blocks.0.attn.hook_z", d_in=8,
                      hook_head_index=2)
    r = saekit("check", str(sae), "--no-log", "--out", str(tmp_path / "out"), home=tmp_path / "home", cwd=tmp_path,
               HF_ENDPOINT="http://127.0.0.1:9")
    line = r.one_line_error(2)
    assert "reads head 2 of blocks.0.attn.hook_z (hook_head_index)" in line, line


def test_check_reads_model_hook_and_dataset_named_the_saelens_way_and_pins_both(tmp_path, hub):
    """An SAE whose cfg names its model by a SAELens alias, its hook the TransformerLens way and
    its dataset by SAELens' dataset_path: the check downloads both from the Hub, pins both to
    their commits and records both; after both repos move on, the re-check reads the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo(MODEL_REPO)
    api.upload_folder(folder_path=str(_tiny_pythia(tmp_path / "m1", seed=1)), repo_id=MODEL_REPO)
    model_commit = api.model_info(MODEL_REPO).sha
    rows = tmp_path / "ds"
    rows.mkdir()
    text = [f"The quick brown fox {i} jumps over the lazy dog. def f(x): return x + {i}" * 3 for i in range(200)]
    pq.write_table(pa.table({"text": text}), rows / "train.parquet")
    api.create_repo("org/tiny-text", repo_type="dataset")
    api.upload_folder(folder_path=str(rows), repo_id="org/tiny-text", repo_type="dataset")
    data_commit = api.dataset_info("org/tiny-text").sha
    sae = _sae_folder(tmp_path / "sae", model_name="pythia-70m-deduped", hook_name="blocks.1.hook_resid_pre",
                      d_in=32, metadata={"dataset_path": "org/tiny-text"})

    _check(tmp_path, hub, str(sae), "--out", str(tmp_path / "c1"))
    rec = json.loads((tmp_path / "c1" / "eval.json").read_text())
    assert (rec["model"]["id"], rec["model"]["revision"]) == (MODEL_REPO, model_commit)
    assert rec["model"]["hook_name"] == "blocks.1.hook_resid_pre"
    assert (rec["data"]["dataset_id"], rec["data"]["revision"], rec["data"]["column"]) == (
        "org/tiny-text", data_commit, "text")

    # both repos move on
    api.upload_folder(folder_path=str(_tiny_pythia(tmp_path / "m2", seed=2)), repo_id=MODEL_REPO)
    pq.write_table(pa.table({"text": ["Other words entirely, nothing like before."] * 200}), rows / "train.parquet")
    api.upload_folder(folder_path=str(rows), repo_id="org/tiny-text", repo_type="dataset")
    assert api.dataset_info("org/tiny-text").sha != data_commit

    _check(tmp_path, hub, "--from-record", str(tmp_path / "c1" / "eval.json"), "--out", str(tmp_path / "c2"))
    again = json.loads((tmp_path / "c2" / "eval.json").read_text())
    assert again["model"] == rec["model"] and again["data"]["revision"] == data_commit
    assert again["data"]["fingerprint"] == rec["data"]["fingerprint"]
    assert again["eval_result_metrics"] == rec["eval_result_metrics"]
