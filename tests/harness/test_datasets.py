"""The check's datasets: local .txt/.jsonl/.parquet, tokenized rows, and Hub datasets on the
loopback Hub (through the real huggingface_hub client), pinned to a commit; the check's
record and MLflow run; saekit --version; the model card's weights statement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from saekit.schemas import BenchmarkRecord, InputError, NotFoundError

from .conftest import cli

pytestmark = pytest.mark.slow

N_TOKENS, CONTEXT = 256, 32  # 8 windows


def _docs(start: int, n: int) -> list[str]:
    """Real English documents (CPython's help topics), each long enough for many windows."""
    import pydoc_data.topics as topics

    return [topics.topics[k] for k in sorted(topics.topics)[start : start + n]]


def _write_rows(folder: Path, docs: list[str]) -> None:
    """The same documents as .parquet (train) and .jsonl (train, second file) and a test split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs, "meta": list(range(len(docs)))}), folder / "data" / "train-00000.parquet")
    (folder / "data" / "train-00001.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (folder / "data" / "test-00000.jsonl").write_text(json.dumps({"text": "a short test row"}) + "\n")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback Hub with the dataset org/ds (tag v1); HF_ENDPOINT and the HF cache point at tmp_path."""
    from huggingface_hub import HfApi

    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    api = HfApi(endpoint=server.url)
    api.create_repo("org/ds", repo_type="dataset")
    _write_rows(tmp_path / "ds", _docs(0, 6))
    server.commit = api.upload_folder(folder_path=tmp_path / "ds", repo_id="org/ds", repo_type="dataset").oid
    api.create_tag("org/ds", tag="v1", repo_type="dataset")
    server.api = api
    yield server
    server.stop()


def _cached(tmp_path: Path, name: str) -> list[Path]:
    return list((tmp_path / "hf-home" / "hub").glob(f"datasets--org--ds/snapshots/*/{name}"))


# --- the loopback Hub's dataset repos ------------------------------------------------------


def test_loopback_hub_serves_dataset_repos_beside_models(hub, tmp_path):
    api = hub.api
    assert api.dataset_info("org/ds", revision="v1").sha == hub.commit
    files = {e.path for e in api.list_repo_tree("org/ds", repo_type="dataset", revision=hub.commit, recursive=True)}
    assert {"data/train-00000.parquet", "data/train-00001.jsonl", "data/test-00000.jsonl"} <= files
    api.create_repo("org/ds")  # a model of the same name is another repo
    assert api.model_info("org/ds").sha != hub.commit
    assert [e.path for e in api.list_repo_tree("org/ds")] == [".gitattributes"]
    with pytest.raises(Exception, match="reserved"):
        api.create_repo("datasets/x")  # /datasets/... names a dataset, never a model


# --- reading datasets -------------------------------------------------------------------------


def test_local_txt_jsonl_parquet_read_the_same_windows(lm, tmp_path):
    from saekit.harness.datasets import token_set

    _, tok = lm
    _write_rows(tmp_path / "rows", _docs(0, 6))
    args = dict(n_tokens=N_TOKENS, context_size=CONTEXT)
    pq = token_set(tok, dataset=str(tmp_path / "rows" / "data" / "train-00000.parquet"), **args)
    jl = token_set(tok, dataset=str(tmp_path / "rows" / "data" / "train-00001.jsonl"), **args)
    folder = token_set(tok, dataset=str(tmp_path / "rows"), **args)  # train split: the parquet file first
    import pyarrow as pa

    with pa.CompressedOutputStream(str(tmp_path / "rows.jsonl.zst"), "zstd") as f:  # The Pile's shard format
        f.write((tmp_path / "rows" / "data" / "train-00001.jsonl").read_bytes())
    zst = token_set(tok, dataset=str(tmp_path / "rows.jsonl.zst"), **args)
    assert pq.tokens.shape == (8, CONTEXT) and (pq.column, pq.dataset_split) == ("text", "train")
    assert pq.fingerprint == jl.fingerprint == folder.fingerprint == zst.fingerprint
    assert (pq.tokens[:, 0] == tok.bos_token_id).all()
    first = tok(_docs(0, 1)[0], add_special_tokens=False)["input_ids"][: CONTEXT - 1]
    assert pq.tokens[0, 1:].tolist() == first  # the first window of the first row (eval: every 8th)
    (tmp_path / "doc.txt").write_text(_docs(0, 1)[0])
    txt = token_set(tok, dataset=str(tmp_path / "doc.txt"), n_tokens=64, context_size=CONTEXT, split="all")
    assert txt.tokens.shape == (2, CONTEXT) and txt.column is None  # a .txt corpus: sampled by seed
    with pytest.raises(InputError, match="split 'validation'"):
        token_set(tok, dataset=str(tmp_path / "rows"), dataset_split="validation", **args)
    with pytest.raises(NotFoundError):
        token_set(tok, dataset=str(tmp_path / "missing.jsonl"), **args)
    (tmp_path / "nocol.jsonl").write_text(json.dumps({"body": "no column SAELens reads"}) + "\n")
    with pytest.raises(InputError, match="no 'tokens', 'input_ids', 'text' or 'problem' column"):
        token_set(tok, dataset=str(tmp_path / "nocol.jsonl"), **args)


def test_tokenized_rows_are_read_as_ids_as_saelens_does(lm, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from saekit.harness.datasets import token_set

    _, tok = lm
    rows = [[tok.bos_token_id] + tok(d, add_special_tokens=False)["input_ids"][:40] for d in _docs(0, 4)]
    # 'tokens' wins over 'input_ids' and 'text' (sae_lens ActivationsStore)
    pq.write_table(pa.table({"text": ["x"] * 4, "input_ids": [[1] * 41] * 4, "tokens": rows}), tmp_path / "tok.parquet")
    ts = token_set(tok, dataset=str(tmp_path / "tok.parquet"), n_tokens=4 * CONTEXT, context_size=CONTEXT, split="all")
    assert ts.column == "tokens" and ts.tokens.tolist() == [r[:CONTEXT] for r in rows] and not ts.prepend_bos
    pq.write_table(pa.table({"input_ids": [[len(tok) + 5] * 40]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="vocabulary"):
        token_set(tok, dataset=str(tmp_path / "other.parquet"), n_tokens=CONTEXT, context_size=CONTEXT, split="all")
    pq.write_table(pa.table({"input_ids": [[1] * 10]}), tmp_path / "short.parquet")
    with pytest.raises(InputError, match="shorter than the context"):
        token_set(tok, dataset=str(tmp_path / "short.parquet"), n_tokens=CONTEXT, context_size=CONTEXT, split="all")


def test_hub_dataset_is_pinned_bounded_and_works_offline(lm, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from saekit.harness.datasets import token_set

    _, tok = lm
    args = dict(n_tokens=N_TOKENS, context_size=CONTEXT)
    ts = token_set(tok, dataset="hf://datasets/org/ds@v1", **args)
    assert (ts.dataset_id, ts.revision, ts.dataset_split, ts.column) == ("org/ds", hub.commit, "train", "text")
    assert ts.corpus == f"hf://datasets/org/ds@{hub.commit}"
    local = token_set(tok, dataset=str(tmp_path / "ds" / "data" / "train-00000.parquet"), **args)
    assert ts.fingerprint == local.fingerprint
    # bounded: the first file held enough windows, so the second was never downloaded
    assert _cached(tmp_path, "data/train-00000.parquet") and not _cached(tmp_path, "data/train-00001.jsonl")
    assert token_set(tok, dataset="org/ds", **args).revision == hub.commit  # SAELens' dataset_path: main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert token_set(tok, dataset=ts.corpus, **args).fingerprint == ts.fingerprint  # from the cache
    with pytest.raises(NotFoundError, match="HF_HUB_OFFLINE"):
        token_set(tok, dataset="hf://datasets/org/ds@" + "0" * 40, **args)


def test_tokenized_hub_dataset_must_have_the_models_vocabulary(lm, hub, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from saekit.harness.datasets import token_set

    _, tok = lm
    tok.save_pretrained(tmp_path / "same")  # the model's tokenizer under another name
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
                            ).save_pretrained(tmp_path / "other")
    for name in ("same", "other"):
        hub.api.create_repo(f"org/{name}")
        hub.api.upload_folder(folder_path=tmp_path / name, repo_id=f"org/{name}")

    def dataset(named: str) -> str:
        folder = tmp_path / f"tok-{named.replace('/', '-')}"
        folder.mkdir()
        pq.write_table(pa.table({"input_ids": [[tok.bos_token_id] + [100] * 40] * 2}), folder / "train.parquet")
        (folder / "sae_lens.json").write_text(json.dumps({"tokenizer_name": named}))  # SAELens' pretokenize runner
        repo = f"org/{folder.name}"
        hub.api.create_repo(repo, repo_type="dataset")
        hub.api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset")
        return f"hf://datasets/{repo}"

    args = dict(n_tokens=CONTEXT, context_size=CONTEXT, split="all", model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    ts = token_set(tok, dataset=dataset("org/same"), **args)  # same vocabulary: read as ids
    assert ts.column == "input_ids" and ts.tokens.shape == (1, CONTEXT)
    assert token_set(tok, dataset=dataset(args["model_id"]), **args).column == "input_ids"  # the model's own name
    with pytest.raises(InputError, match="vocabulary is not the model's"):
        token_set(tok, dataset=dataset("org/other"), **args)
    with pytest.raises(NotFoundError, match="tokenizer gpt2"):
        token_set(tok, dataset=dataset("gpt2"), **args)  # a tokenizer that cannot be compared is not trusted


# --- the check ----------------------------------------------------------------------------------


def test_check_reads_the_saes_dataset_pins_it_and_logs_it_in_mlflow(lm, hub, real_sae_dir, tmp_path):
    from mlflow import MlflowClient

    from saekit.registry import store
    from saekit.registry import tags as T

    sae_dir = tmp_path / "sae"
    shutil.copytree(real_sae_dir, sae_dir)
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    cfg["metadata"]["dataset_path"] = "org/ds"  # as SAELens stores it
    (sae_dir / "cfg.json").write_text(json.dumps(cfg))
    info = store.register("ds-sae", sae_dir)
    out = tmp_path / "check"
    res = cli("check", f"{info.name}/{info.version}", "--tokens", str(N_TOKENS), "--context", str(CONTEXT),
              "--no-cards", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    rec = BenchmarkRecord.model_validate_json((out / "eval.json").read_text())
    data = rec.data
    assert (data.dataset_id, data.revision, data.split, data.column) == ("org/ds", hub.commit, "train", "text")
    assert data.source == rec.check_config.corpus == f"hf://datasets/org/ds@{hub.commit}"
    assert rec.check_config.dataset_split == "train" and data.n_tokens == N_TOKENS
    assert rec.model.weights == "SmolLM2-135M-Instruct, Q4_1 GGUF de-quantized to float32"

    # the check's MLflow run: params (flattened check_config), the dataset input, metrics
    version = store.resolve(f"{info.name}/{info.version}")
    client = MlflowClient(store.registry_uri())
    run = client.get_run(version.tags[T.CHECK_RUN])
    assert run.data.tags["mlflow.parentRunId"] == version.run_id
    assert run.data.params["corpus"] == data.source and run.data.params["n_tokens"] == str(N_TOKENS)
    assert run.data.params["cards.enabled"] == "False" and run.data.params["hook_name"] == "model.layers.6"
    assert run.data.metrics["explained_variance"] == pytest.approx(rec.metric("explained_variance"))
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.name == "org/ds" and inp.dataset.digest == data.fingerprint[:36]
    assert json.loads(inp.dataset.source)["revision"] == hub.commit
    assert {t.key: t.value for t in inp.tags}["saekit.fingerprint"] == data.fingerprint

    # the repo moves on; the re-check from the record reads the pinned commit
    _write_rows(tmp_path / "ds", _docs(10, 6))
    new = hub.api.upload_folder(folder_path=tmp_path / "ds", repo_id="org/ds", repo_type="dataset").oid
    assert new != hub.commit
    again = cli("check", "--from-record", str(out / "eval.json"), "--no-cards", "--no-log", "--out",
                str(tmp_path / "again"), "--json")
    assert again.exit_code == 0, again.output
    rec2 = BenchmarkRecord.model_validate_json((tmp_path / "again" / "eval.json").read_text())
    assert (rec2.data.revision, rec2.data.fingerprint) == (hub.commit, data.fingerprint)
    assert rec2.eval_result_metrics == rec.eval_result_metrics
    moved = cli("check", str(sae_dir), "--tokens", str(N_TOKENS), "--context", str(CONTEXT), "--no-cards",
                "--no-log", "--out", str(tmp_path / "moved"), "--json")
    assert moved.exit_code == 0, moved.output
    rec3 = BenchmarkRecord.model_validate_json((tmp_path / "moved" / "eval.json").read_text())
    assert rec3.data.revision == new and rec3.data.fingerprint != data.fingerprint


def test_version_flag():
    from saekit.schemas.version import __version__

    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"saekit {__version__}"


@pytest.mark.skipif(not Path("/usr/share/games/fortunes/people").is_file(),
                    reason="Debian's fortunes package is not installed (apt-get install fortunes)")
def test_fortunes_corpus_is_english_quotes_without_separators():
    """``fortunes`` (the graphs example's training text) reads Debian's English fortune files:
    windows of plain text, the '%' separator lines blanked, through both token_set entry points."""
    from saekit.harness.datasets import parse_dataset, token_set
    from saekit.harness.model import load_lm
    from saekit.harness.text import FORTUNES_FILES, corpus_documents

    docs = corpus_documents("fortunes")
    assert [name for name, _ in docs] == [f for f in FORTUNES_FILES if Path("/usr/share/games/fortunes", f).is_file()]
    assert all("\n%\n" not in text for _, text in docs) and sum(len(t) for _, t in docs) > 1_000_000
    assert parse_dataset("fortunes").id == "fortunes"
    _, tok = load_lm()
    ts = token_set(tok, n_tokens=N_TOKENS, context_size=CONTEXT, dataset="fortunes", split="train")
    assert ts.tokens.shape == (N_TOKENS // CONTEXT, CONTEXT) and ts.source.startswith("Debian fortunes")
    text = tok.decode(ts.tokens[:, 1:].reshape(-1))
    assert " the " in text and "\n%\n" not in text
