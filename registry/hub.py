"""The one way saekit talks to the Hugging Face Hub: the endpoint and cache of the settings,
an ``HfApi`` whose every request is bounded in time, the translation of huggingface_hub's
and the network's failures into one-line saekit errors (masked: saekit.schemas.masking), the
checks every Hub answer gets (commit ids, file listings), and progress bars that follow
``--quiet``.

Reading checkpoints (registry.hub_source), the harness's models and datasets, and releases
(publish, ``hf://`` loading) all go through here. It sits in the registry layer, the lowest
that talks to the Hub, so that the layers above import it (registry may not import releases).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from saekit.schemas import HubError, IntegrityError, NotFoundError, SaekitError, safeio
from saekit.schemas.masking import mask
from saekit.schemas.settings import current

_COMMIT = re.compile(r"[0-9a-f]{40}")


# --- settings ----------------------------------------------------------------------------


def endpoint() -> str | None:
    """The settings' HF_ENDPOINT (huggingface_hub reads it once, at import)."""
    value = current().hub_endpoint
    return value.rstrip("/") if value else None


def cache_dir() -> str | None:
    """HF_HUB_CACHE of the settings in use (huggingface_hub reads it once, at import)."""
    return current().hub_cache


# --- the one way to talk to the Hub: bounded in time ----------------------------------------

_TIMEOUT: dict[str, float] = {}
"""httpx's per-request timeout (connect, read, write, pool) of the settings of the last hub_api()."""


def _bound_request(request: Any) -> None:
    # huggingface_hub 2.x calls many endpoints with timeout=None, which in httpx means no limit,
    # on one shared client created with timeout=None (huggingface_hub/utils/_http.py,
    # default_client_factory). A request hook runs before the transport reads
    # request.extensions["timeout"], so every request, whatever timeout its caller chose,
    # waits at most the settings' seconds.
    request.extensions["timeout"] = dict(_TIMEOUT)


def _client_factory() -> Any:
    import httpx2

    class HubTimeout(httpx2.TransportError):
        """A request that ran out of the settings' time. Not one of the errors huggingface_hub
        retries (httpx TimeoutException, NetworkError; utils/_http.py
        _DEFAULT_RETRY_ON_EXCEPTIONS): a download would otherwise wait 7 x the timeout
        plus 23 s of backoff (file_download.py retries its metadata call 5 times)."""

    class BoundedTransport(httpx2.HTTPTransport):
        def handle_request(self, request: Any) -> Any:
            try:
                return super().handle_request(request)
            except httpx2.TimeoutException as err:
                raise HubTimeout(f"{err.__class__.__name__}: {err}", request=request) from err

    # huggingface_hub's own request hook first: it refuses every request under HF_HUB_OFFLINE
    # (OfflineModeIsEnabled, which callers fall back to the cache on) and tags downloads
    # (huggingface_hub 2.4 utils/_http.py hf_request_event_hook, default_client_factory)
    from huggingface_hub.utils._http import hf_request_event_hook

    return httpx2.Client(follow_redirects=True, transport=BoundedTransport(),
                         event_hooks={"request": [hf_request_event_hook, _bound_request]})


def bound_hub_requests() -> None:
    """Make every huggingface_hub request of this process (HfApi, hf_hub_download,
    snapshot_download, and libraries on top such as transformers) time out after the
    settings' ``connect_timeout`` / ``read_timeout``, through huggingface_hub's public
    ``set_client_factory``. Call it before talking to the Hub; ``hub_api`` does."""
    from huggingface_hub import set_client_factory

    settings = current()
    timeout = {"connect": settings.connect_timeout, "read": settings.read_timeout,
               "write": settings.read_timeout, "pool": settings.connect_timeout}
    if not _TIMEOUT:
        set_client_factory(_client_factory)
        if not settings.debug:  # its "Retrying in 1s" lines are not saekit's one line
            logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
    _TIMEOUT.update(timeout)


def hub_api(url: str | None = None) -> Any:
    """An ``HfApi`` for ``url`` (default: the settings' endpoint), its requests bounded in time."""
    from huggingface_hub import HfApi

    bound_hub_requests()
    return HfApi(endpoint=url or endpoint())


_NETWORK_ERRORS = {"ConnectError", "ConnectionError", "TimeoutException", "Timeout", "TransportError", "NetworkError",
                   "RemoteProtocolError", "ProtocolError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                   "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "ReadError", "WriteError"}


def _from_hub_client(err: BaseException) -> bool:
    """An error huggingface_hub raised reading a Hub's answer (HfUriError on a bad repo URL,
    ...): the answer is input, so this is the Hub's fault, not saekit's."""
    return type(err).__module__.startswith("huggingface_hub")


def is_network_error(err: BaseException) -> bool:
    """Connection, timeout and protocol errors of httpx/requests/urllib3, and huggingface_hub's
    errors reading an answer (HTTP error answers are mapped before, by status)."""
    names = {c.__name__ for c in type(err).__mro__}
    return _from_hub_client(err) or bool(names & _NETWORK_ERRORS)


def unreachable_message(err: BaseException, url: str | None = None) -> str:
    """One line for a network failure talking to the Hub: the endpoint (masked), the error,
    and for a timeout the seconds waited and the setting that changes them."""
    url = url or endpoint() or "https://huggingface.co"
    names: set[str] = set()
    cause: BaseException | None = err
    while cause is not None:  # huggingface_hub wraps a timeout in its own errors
        names |= {c.__name__ for c in type(cause).__mro__}
        cause = cause.__cause__ or cause.__context__
    if names & {"ConnectTimeout", "PoolTimeout"}:
        why = f" (no connection within {_TIMEOUT.get('connect', 0):g} s; SAEKIT_CONNECT_TIMEOUT)"
    elif names & {"TimeoutException", "Timeout", "ReadTimeout", "WriteTimeout", "TimeoutError"}:
        why = f" (no answer within {_TIMEOUT.get('read', 0):g} s; SAEKIT_READ_TIMEOUT)"
    else:
        detail = (str(err).splitlines() or [""])[0][:200]
        why = f" ({detail})" if detail else ""
        if _from_hub_client(err) and not names & {"OSError", "LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
            return mask(f"unreadable answer from the Hub at {url}: {err.__class__.__name__}{why}")
    return mask(f"cannot reach the Hub at {url}: {err.__class__.__name__}{why}")


def check_commit(revision: str, commit: object, *, where: str) -> str:
    """The commit a revision resolved to. A 40-hex revision names a commit and must come back
    as that commit: a branch or tag named like an older commit id must not stand in for it."""
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise IntegrityError(f"the Hub answered no commit id for revision {revision!r}", where=where)
    if _COMMIT.fullmatch(revision.lower()) and commit != revision.lower():
        raise IntegrityError(f"revision {revision} resolved to another commit ({commit}); a branch or tag "
                             "is named like that commit id", where=where)
    return commit


def check_listing(paths: list[str], *, where: str) -> list[str]:
    """A Hub file listing is input: every name must be a plain relative path inside the repo."""
    for path in paths:
        safeio.check_relpath(path, where=f"{where}: the Hub listed {str(path)[:100]!r}")
    return paths


# --- failures as one line ----------------------------------------------------------------


@contextmanager
def hub_errors(where: str, *, failure: type[SaekitError] = HubError, url: str | None = None) -> Iterator[None]:
    """Map huggingface_hub and network failures inside the block to one-line saekit errors:
    NotFoundError for a repo, revision or file the Hub says it lacks; ``failure`` (HubError
    reading from the Hub, PublishError for releases) for a refusal or an unreachable Hub
    (``url``: the endpoint to name, default the settings'). saekit's own errors pass through."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except SaekitError:
        raise
    except RepositoryNotFoundError:
        raise NotFoundError("no repo by that name on the Hub (or it is private)", where=where) from None
    except RevisionNotFoundError:
        raise NotFoundError("no revision by that name in the repo", where=where) from None
    except EntryNotFoundError as err:
        if isinstance(err, LocalEntryNotFoundError):  # not in the cache, and the Hub did not serve it
            if _answered_not_found(err):  # the Hub was reached and said 404: not a network failure
                raise NotFoundError("the Hub has no such repo, revision or file (404)", where=where) from None
            raise failure(unreachable_message(err, url), where=where) from None
        raise NotFoundError("no such file at this revision", where=where) from None
    except HfHubHTTPError as err:
        if getattr(getattr(err, "response", None), "status_code", None) == 412:
            raise failure("the repo changed since the parent commit we compared against; run again",
                          where=where) from None
        raise failure(f"Hub request failed ({_first_line(err)})", where=where) from None
    except Exception as err:  # noqa: BLE001 - a dead endpoint, a timeout, a reset connection
        if is_network_error(err) or isinstance(err, OSError):
            raise failure(unreachable_message(err, url), where=where) from None
        raise


def _first_line(err: BaseException) -> str:
    """The first line of an error's text (at most 160 characters), secrets masked."""
    return mask((str(err).splitlines() or [err.__class__.__name__])[0][:160])


def _answered_not_found(err: BaseException) -> bool:
    """Whether huggingface_hub's "not in the cache" error hides a 404 from the Hub itself (it
    falls back to the cache on any HTTP error, a missing repo included)."""
    cause: BaseException | None = err.__cause__ or err.__context__
    while cause is not None:
        if getattr(getattr(cause, "response", None), "status_code", None) == 404:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


# --- progress ----------------------------------------------------------------------------


def _quiet() -> bool:
    return current().quiet


@contextmanager
def quiet_progress(*, force: bool = False) -> Iterator[None]:
    """huggingface_hub's progress bars off while saekit is quiet (SAEKIT_QUIET, --quiet), or
    with ``force`` (a glob shows one bar for all its SAEs)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not (force or _quiet()) or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
