"""saekit.registry.hub.hub_errors: the one translation of huggingface_hub's and the network's
failures into one-line saekit errors, for every caller (checkpoints, harness, publish, hf://)."""

from __future__ import annotations

import pytest

httpx2 = pytest.importorskip("httpx2")
errors = pytest.importorskip("huggingface_hub.errors")

from saekit.registry.hub import hub_errors  # noqa: E402
from saekit.schemas import HubError, IntegrityError, NotFoundError, PublishError  # noqa: E402

URL = "http://127.0.0.1:9/api/models/org/r?token=hf_abcdefghijklmnop"


def _answer(status: int) -> "httpx2.Response":
    return httpx2.Response(status, request=httpx2.Request("POST", URL))


@pytest.mark.parametrize("failure", [HubError, PublishError])
def test_refusals_and_dead_hubs_become_one_masked_line_of_the_callers_type(failure):
    with pytest.raises(failure) as err:
        with hub_errors("org/r", failure=failure):
            raise errors.HfHubHTTPError(f"500 Server Error for url: {URL}\nmore detail", response=_answer(500))
    assert err.value.message.startswith("Hub request failed (500 Server Error for url: http://127.0.0.1:9/")
    assert "token=***" in err.value.message and "hf_abc" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(failure, match="changed since the parent commit"):
        with hub_errors("org/r", failure=failure):
            raise errors.HfHubHTTPError("412 Precondition Failed", response=_answer(412))
    with pytest.raises(failure, match=r"cannot reach the Hub at http://127.0.0.1:9: ConnectError \(refused\)"):
        with hub_errors("org/r", failure=failure, url="http://127.0.0.1:9"):
            raise httpx2.ConnectError("refused")


def test_what_the_hub_lacks_is_not_found_and_saekit_errors_pass_through():
    with pytest.raises(NotFoundError, match="no repo by that name"):
        with hub_errors("hf://org/r"):
            raise errors.RepositoryNotFoundError("404", response=_answer(404))
    with pytest.raises(NotFoundError, match="no revision by that name"):
        with hub_errors("hf://org/r@v9"):
            raise errors.RevisionNotFoundError("404", response=_answer(404))
    mine = IntegrityError("sha256 mismatch", where="x")
    with pytest.raises(IntegrityError) as err:
        with hub_errors("hf://org/r"):
            raise mine
    assert err.value is mine
    with pytest.raises(KeyError):  # a bug is not dressed up as a Hub failure
        with hub_errors("hf://org/r"):
            raise KeyError("x")
