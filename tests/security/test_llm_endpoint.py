"""``saekit cards explain`` against a fault-injecting OpenAI-compatible server on loopback.

The server (stdlib http.server, in this process, stopped by the test or by its own timer)
answers each latent's requests by a script: 429 with Retry-After, 500s, a hang past the
client's timeout, truncated JSON, a wrong content type, a 400, a 401 that echoes the API key,
and good answers. Every latent must end explained or with its failure recorded, exit 0,
within a time bound, nothing half-written, the key nowhere; a rerun is served from the cache.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sec_helpers import env, log_measure, saekit, tree_contains
from saekit.harness.llm_client import OpenAIChatClient, Params
from saekit.schemas import EndpointError, InputError

API_KEY = "sk-test-Zq9vLm2Xw4Rt7Yp1"
HANG_S = 3.0


class FaultServer(ThreadingHTTPServer):
    """Answers chat completions by a per-latent script of faults; counts every request."""

    daemon_threads = True

    def __init__(self, script: dict[int, list[str]], delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script, self.delay = script, delay
        self.seen: dict[int, int] = {}
        self.auth: set[str] = set()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout, kill) leaves a broken pipe: expected here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def total(self) -> int:
        return sum(self.seen.values())


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _score(self, prompt: str, logprobs: bool) -> None:
        """An oracle scorer: an excerpt fires if it holds the explanation's LATn word (for
        fuzzing: inside the marks); an explanation containing 'garbage' gets an answer with no
        list. With logprobs: P(1) 0.9 where it answers 1, 0.2 where it answers 0."""
        with self.server.lock:
            self.server.seen[-1] = self.server.seen.get(-1, 0) + 1
        explanation = re.search(r"Explanation: (.*)", prompt)[1]
        excerpts = re.findall(r"Excerpt \d+: (.*)", prompt)
        if "garbage" in explanation:
            content = "I am not sure."
        else:
            word = re.search(r"LAT\d+", explanation)[0]
            if "marked" in prompt:  # fuzzing: right if the word is inside the marks
                content = json.dumps([int(any(word in m for m in re.findall(r"<<(.*?)>>", e))) for e in excerpts])
            else:
                content = json.dumps([int(re.search(rf"{word}\b", e) is not None) for e in excerpts])
        choice = {"message": {"role": "assistant", "content": content}}
        if logprobs:
            def token(t: str) -> dict:
                p1 = {"1": 0.9, "0": 0.2}.get(t.strip())
                top = [] if p1 is None else [{"token": "1", "logprob": math.log(p1)},
                                             {"token": "0", "logprob": math.log(1 - p1)}]
                return {"token": t, "logprob": -0.1, "top_logprobs": top}

            choice["logprobs"] = {"content": [token(t) for t in re.findall(r"\s*\S", content)]}
        reply = {"choices": [choice], "usage": {"prompt_tokens": 50, "completion_tokens": 5}}
        self._send(200, json.dumps(reply).encode())

    def _saebench(self, prompt: str) -> None:
        """The same oracle in SAEBench's answer format: the numbers of the sequences holding the
        LATn word, comma-separated, or "None"; 'garbage' gets an answer that does not parse."""
        with self.server.lock:
            self.server.seen[-2] = self.server.seen.get(-2, 0) + 1
        explanation = re.search(r"this neuron fires on (.*)\.\n", prompt)[1]
        word = re.search(r"LAT\d+", explanation)[0]
        hits = [n for n, text in re.findall(r"^(\d+)\. (.*)$", prompt, re.M) if re.search(rf"{word}\b", text)]
        content = "I am not sure." if "garbage" in explanation else (", ".join(hits) or "None")
        reply = {"choices": [{"message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": 50, "completion_tokens": 5}}
        self._send(200, json.dumps(reply).encode())

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if "Excerpt 1:" in prompt:
            return self._score(prompt, bool(body.get("logprobs")))
        if "Here are the examples:" in prompt:
            return self._saebench(prompt)
        latent = int(re.search(r"LAT(\d+)", prompt)[1])
        with srv.lock:
            n = srv.seen.get(latent, 0)
            srv.seen[latent] = n + 1
            srv.auth.add(self.headers.get("Authorization", ""))
        steps = srv.script.get(latent, ["ok"])
        step = steps[min(n, len(steps) - 1)]
        time.sleep(srv.delay)
        good = {
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"the word LAT{latent}"}}],
            "usage": {"prompt_tokens": 100 + latent, "completion_tokens": 3},
        }
        if step == "ok":
            self._send(200, json.dumps(good).encode())
        elif step == "echo":  # a hostile server puts the key in its answer and its Server header
            auth = self.headers.get("Authorization", "")
            good["choices"][0]["message"]["content"] += f" {auth}"
            self._send(200, json.dumps(good).encode(), headers={"Server": auth})
        elif step == "429":
            self._send(429, b'{"error": "slow down"}', headers={"Retry-After": "1"})
        elif step == "500":
            self._send(500, b"oops", "text/plain")
        elif step == "hang":
            time.sleep(HANG_S)
            self._send(200, json.dumps(good).encode())
        elif step == "truncated":
            self._send(200, json.dumps(good).encode()[:40])
        elif step == "html":
            self._send(200, b"<html>proxy login</html>", "text/html")
        elif step == "drip":  # one byte at a time, each well within the socket timeout
            data = json.dumps(good).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(0.1)
        elif step == "headerdrip":  # header lines one byte at a time, never the end of them
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(400):
                for c in b"X-Pad: y\r\n":
                    self.wfile.write(bytes([c]))
                    self.wfile.flush()
                    time.sleep(0.05)
        elif step == "400":
            self._send(400, b'{"error": "bad request"}')
        elif step == "401echo":
            self._send(401, json.dumps({"error": "bad key", "got": self.headers.get("Authorization")}).encode())


@contextmanager
def fault_server(script: dict[int, list[str]], delay: float = 0.0, lifetime: float = 120.0):
    srv = FaultServer(script, delay)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stop = threading.Timer(lifetime, srv.shutdown)  # stops by itself if a test hangs
    stop.daemon = True
    stop.start()
    try:
        yield srv
    finally:
        stop.cancel()
        srv.shutdown()
        srv.server_close()


def _card(i: int) -> dict:
    toks = ["The", " word", f" LAT{i}", " is", " here"]
    return {
        "schema_version": "1.0",
        "sae": {"name": "toy", "version": "1", "d_sae": 64},
        "index": i,
        "top_examples": [{"tokens": toks, "values": [0.0, 0.1, 5.0, 0.2, 0.0], "max_position": 2, "bin": "top"}],
    }


def _write_cards(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(_card(i)) + "\n" for i in range(n)))
    return path


SCRIPT = {
    0: ["ok"],
    1: ["429", "ok"],
    2: ["500", "500", "ok"],
    3: ["hang", "ok"],
    4: ["truncated", "ok"],
    5: ["html", "ok"],
    6: ["400"],
    7: ["401echo"],
    8: ["echo"],
}


def _explain(srv: FaultServer, cards: Path, out: Path, home: Path, cache: Path, *extra: str):
    return saekit(
        "cards", "explain", str(cards), "--out", str(out), "--endpoint", srv.url, "--model", "fault-model",
        "--timeout", "1", "--concurrency", "4", "--price-in", "2", "--price-out", "10", "--json", *extra,
        home=home, timeout=120, OPENAI_API_KEY=API_KEY, SAEKIT_CACHE_DIR=str(cache),
    )


def test_faults_end_explained_or_recorded_and_a_rerun_is_cached(tmp_path):
    cards = _write_cards(tmp_path / "cards.jsonl", 9)
    out_dir = tmp_path / "out"
    out = out_dir / "explained.jsonl"
    home, cache = tmp_path / "home", tmp_path / "cache"
    with fault_server(SCRIPT) as srv:
        r = _explain(srv, cards, out, home, cache)
        log_measure("explain 9 latents through faults", r)
        assert r.rc == 0, r.err
        assert r.seconds < 30, r.seconds  # 1 s hang timeout, 1 s Retry-After, short backoffs
        summary = json.loads(r.out)
        assert srv.auth == {f"Bearer {API_KEY}"}
        # retried faults: one extra try each; the 4xx are not retried
        assert srv.seen == {0: 1, 1: 2, 2: 3, 3: 2, 4: 2, 5: 2, 6: 1, 7: 1, 8: 1}
        assert summary["http_requests"] == 15 and summary["requests_sent"] == 9
        assert (summary["explained"], summary["failed"]) == (7, 2)
        assert summary["tokens_in"] == sum(100 + i for i in (0, 1, 2, 3, 4, 5, 8)) and summary["tokens_out"] == 21
        # --price-in 2 --price-out 10 per million tokens, per latent asked (9), times d_sae (64)
        assert summary["projected_cost"] == pytest.approx((723 * 2 + 21 * 10) / 1e6 / 9 * 64)

        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert [c["index"] for c in written] == list(range(9))
        for c in written:
            (ann,) = c["annotations"]
            prov = ann["provenance"]
            assert c["schema_version"] == "1.1" and prov["model"] == "fault-model"
            assert prov["endpoint_kind"] == "openai-compatible" and prov["sampling"]["temperature"] == 0
            assert prov["examples"] == [{"where": "top_examples", "index": 0, "bin": "top"}]
            if c["index"] in (6, 7):
                assert "description" not in ann and "HTTP 40" in prov["error"]
            else:
                assert ann["description"].startswith(f"the word LAT{c['index']}") and "error" not in prov
        assert sorted(p.name for p in out_dir.iterdir()) == ["explained.jsonl"]  # no journal, no temp file
        v = saekit("cards", "validate", str(out), home=home)
        assert v.rc == 0, v.out + v.err

        first = out.read_bytes()
        before = srv.total
        again = _explain(srv, cards, out, home, cache)
        log_measure("explain rerun (7 cached, 2 failed asked again)", again)
        assert again.rc == 0
        assert out.read_bytes() == first  # byte-identical
        assert srv.total - before == 2  # only the two failed latents are asked again
        assert json.loads(again.out)["requests_cached"] == 7

        before = srv.total
        subset = _explain(srv, cards, tmp_path / "subset.jsonl", home, cache, "--latents", "0,1,2,3,4,5")
        assert subset.rc == 0 and srv.total == before  # zero requests: all from the cache
        assert json.loads(subset.out)["requests_sent"] == 0

    for run in (r, again, subset):
        assert API_KEY not in run.out + run.err
    assert tree_contains(tmp_path, API_KEY.encode()) == []


def test_resume_after_a_kill_asks_only_for_unfinished_latents(tmp_path):
    cards = _write_cards(tmp_path / "cards.jsonl", 12)
    out = tmp_path / "explained.jsonl"
    journal = tmp_path / ".explained.jsonl.explain-journal.jsonl"
    home = tmp_path / "home"
    with fault_server({}, delay=0.4) as srv:
        cmd = [sys.executable, "-m", "saekit", "cards", "explain", str(cards), "--out", str(out),
               "--endpoint", srv.url, "--model", "m", "--concurrency", "1"]
        child = subprocess.Popen(cmd, env=env(home, SAEKIT_CACHE_DIR=str(tmp_path / "cache1")),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 4):
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        assert not out.exists()  # killed before the end: no output at all, not half of one
        finished = {json.loads(x)["key"] for x in journal.read_text().splitlines()[1:] if x.endswith("}")}
        assert 3 <= len(finished) < 12
        seen_before = dict(srv.seen)

        # a fresh request cache: only the journal can spare the finished latents
        r = saekit("cards", "explain", str(cards), "--out", str(out), "--endpoint", srv.url, "--model", "m",
                   "--concurrency", "1", "--resume", "--json", home=home, timeout=120,
                   SAEKIT_CACHE_DIR=str(tmp_path / "cache2"))
        assert r.rc == 0, r.err
        summary = json.loads(r.out)
        assert summary["resumed"] == len(finished) and summary["explained"] == 12
        asked_again = {i for i, n in srv.seen.items() if n > seen_before.get(i, 0)}
        assert not asked_again & {int(k.rsplit("#", 1)[1]) for k in finished}
        assert len(asked_again) == 12 - len(finished)
        assert not journal.exists()
        assert all(json.loads(x)["annotations"][0]["description"].startswith("the word")
                   for x in out.read_text().splitlines())


def test_client_gives_up_after_its_tries_and_masks_the_key():
    script = {0: ["500"], 1: ["hang"], 2: ["401echo"], 3: ["drip"]}
    with fault_server(script) as srv:
        client = OpenAIChatClient(srv.url, "m", api_key=API_KEY, timeout=0.5, tries=5, backoff_s=0.01)
        msg = [{"role": "user", "content": "LAT0"}]
        t = time.monotonic()
        with pytest.raises(EndpointError, match=r"HTTP 500 \(gave up after 5 tries\)"):
            client.generate(msg, Params())
        assert srv.seen[0] == 5
        with pytest.raises(EndpointError, match="no answer within 0.5 s"):
            client.generate([{"role": "user", "content": "LAT1"}], Params())
        assert srv.seen[1] == 5 and time.monotonic() - t < 10
        with pytest.raises(EndpointError) as err:
            client.generate([{"role": "user", "content": "LAT2"}], Params())
        assert "HTTP 401 (not retried)" in str(err.value) and API_KEY not in str(err.value)
        t = time.monotonic()  # ~200 bytes at 0.1 s each would hold each try 20 s without a deadline
        with pytest.raises(EndpointError, match="no full answer within 0.5 s"):
            client.generate([{"role": "user", "content": "LAT3"}], Params())
        assert srv.seen[3] == 5 and time.monotonic() - t < 10
    assert OpenAIChatClient("http://x/v1", "m", tries=1).tries == 5  # never fewer than 5 tries
    with pytest.raises(InputError):
        OpenAIChatClient("file:///etc/passwd", "m")


def test_a_server_dripping_its_header_lines_is_cut_at_the_deadline():
    """Before (redteam): the whole-answer deadline began after the headers, so header lines
    sent a byte at a time (each within the socket timeout) held `cards explain --timeout 2`
    past 150 s (killed). Now each try ends about twice the timeout after it connected."""
    with fault_server({0: ["headerdrip"]}) as srv:
        client = OpenAIChatClient(srv.url, "m", timeout=0.5, tries=5, backoff_s=0.01)
        t = time.monotonic()
        with pytest.raises(EndpointError, match=r"no answer within 0.5 s \(gave up after 5 tries\)"):
            client.generate([{"role": "user", "content": "LAT0"}], Params())
        assert srv.seen[0] == 5 and time.monotonic() - t < 10


def test_cli_refuses_a_missing_key_variable_in_one_line(tmp_path):
    cards = _write_cards(tmp_path / "cards.jsonl", 1)
    r = saekit("cards", "explain", str(cards), "--out", str(tmp_path / "o.jsonl"), "--endpoint",
               "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NO_SUCH_KEY_VAR", home=tmp_path / "home")
    assert "NO_SUCH_KEY_VAR" in r.one_line_error(2)
    assert not (tmp_path / "o.jsonl").exists()
    with fault_server({}) as srv:  # an --out that cannot be written is refused before any request
        for out, words in ((tmp_path, "is a folder"), ("-", "needs a file")):
            for cmd in ("explain", "score"):
                r = saekit("cards", cmd, str(cards), "--out", str(out), "--endpoint", srv.url, "--model", "m",
                           home=tmp_path / "home")
                assert words in r.one_line_error(2)
        assert srv.total == 0


def _explained_card(i: int, explanation: str) -> dict:
    """Six examples; the first two were shown to the explainer, the other four are held out;
    four windows where the latent is zero."""
    toks = [" x"] * 10 + [f" LAT{i}", " y"]
    ex = {"tokens": toks, "values": [0.0] * 10 + [4.0, 0.5], "max_position": 10, "bin": "top"}
    shown = [{"where": "top_examples", "index": k, "bin": "top"} for k in (0, 1)]
    prov = {"model": "m", "endpoint_kind": "openai-compatible", "prompt_template": "saekit-explain-v1",
            "prompt_sha256": "0" * 64, "sampling": {"temperature": 0.0, "seed": 0}, "examples": shown}
    return {"schema_version": "1.1", "sae": {"name": "toy", "d_sae": 64}, "index": i,
            "annotations": [{"description": explanation, "provenance": prov}], "top_examples": [ex] * 6,
            "negative_examples": [{"tokens": [" x"] * 10, "values": [0.0] * 10, "bin": "negative"}] * 4}


def test_score_detection_against_the_control_with_failures_not_counted(tmp_path):
    cards = tmp_path / "explained.jsonl"
    expl = ["the word LAT0", "the word LAT1", "the word LAT2", "garbage LAT3"]
    cards.write_text("".join(json.dumps(_explained_card(i, e)) + "\n" for i, e in enumerate(expl)))
    out = tmp_path / "scored.jsonl"
    home, cache = tmp_path / "home", tmp_path / "cache"
    args = ["cards", "score", str(cards), "--out", str(out), "--model", "judge", "--json"]
    with fault_server({}) as srv:
        r = saekit(*args, "--endpoint", srv.url, home=home, SAEKIT_CACHE_DIR=str(cache))
        assert r.rc == 0, r.err
        summary = json.loads(r.out)
        assert summary["scored"] == 3
        names = [f"{s} {m}" for s in ("detection", "fuzzing") for m in ("balanced_accuracy", "auc")]
        sb = "saebench_autointerp accuracy"
        assert summary["means"] == {**dict.fromkeys(names, 1.0), sb: 1.0}
        # SAEBench's plain accuracy: the control answers "None", right on the 4 negatives of 8
        assert summary["control_means"] == {**dict.fromkeys(names, 0.5), sb: 0.5}
        got = {}
        for line in out.read_text().splitlines():
            c = json.loads(line)
            for rec in c["annotations"][0]["score_records"]:
                assert rec["chance"] == 0.5 and rec["scorer_model"] == "judge"
                assert len(rec["prompt_sha256"]) == 64
                got[rec["scorer"], rec["metric"], c["index"], rec["control"]] = (
                    rec.get("value"), rec["n_pos"], rec["n_neg"], rec["n_failed"])
        ok, chance, failed = (1.0, 4, 4, 0), (0.5, 4, 4, 0), (None, 0, 0, 8)
        for scorer in ("detection", "fuzzing"):
            assert {k[2:]: v for k, v in got.items() if k[:2] == (scorer, "balanced_accuracy")} == {
                (0, False): ok, (0, True): chance,  # control: latent 1's explanation
                (1, False): ok, (1, True): chance,
                (2, False): ok, (2, True): failed,  # latent 3's answers do not parse
                (3, False): failed, (3, True): chance,  # failed: never a score
            }
            # AUC from the answers' log-probabilities; the control's answers all tie at P(1) 0.2
            assert {k[2:]: v for k, v in got.items() if k[:2] == (scorer, "auc")} == {
                (0, False): ok, (0, True): chance, (1, False): ok, (1, True): chance, (2, False): ok, (3, True): chance,
            }
        # SAEBench's protocol: 2 held-out top examples as its top, the next 2 in its IW slots, 4 negatives
        ok, chance, failed = (1.0, 4, 4, 0), (0.5, 4, 4, 0), (None, 0, 0, 8)
        assert {k[2:]: v for k, v in got.items() if k[0] == "saebench_autointerp"} == {
            (0, False): ok, (0, True): chance, (1, False): ok, (1, True): chance,
            (2, False): ok, (2, True): failed, (3, False): failed, (3, True): chance,
        }
        assert summary["n_failed"] == 32 + 16
        # its SAEBench record, beside the cards: the mean of the scored latents; latent 3 failed, not scored
        from sae_bench.evals.autointerp.eval_output import AutoInterpEvalOutput

        path = Path(summary["saebench_record"])
        assert path == tmp_path / "scored_autointerp_eval_results.json"
        record = AutoInterpEvalOutput(**json.loads(path.read_text()))
        assert record.eval_type_id == "autointerp" and record.eval_config.override_latents == [0, 1, 2, 3]
        assert record.eval_result_metrics.autointerp.autointerp_score == 1.0
        assert record.eval_result_metrics.autointerp.autointerp_std_dev == 0.0
        assert record.eval_result_unstructured["0"]["correct seqs"] and record.eval_result_unstructured["0"]["score"] == 1.0
        assert record.eval_result_unstructured["saekit"]["failed_latents"] == [3] and "3" not in record.eval_result_unstructured
        assert saekit("cards", "validate", str(out), home=home).rc == 0

        first, before = out.read_bytes(), srv.total
        again = saekit(*args, "--endpoint", srv.url, home=home, SAEKIT_CACHE_DIR=str(cache))
        assert again.rc == 0 and out.read_bytes() == first
        # the unparseable answers came back from the server, so they were cached too
        assert srv.total == before and json.loads(again.out)["requests_sent"] == 0
