"""The one masking function (saekit.schemas.masking.mask): every secret form saekit may
print is masked, and what says where (scheme, user, host, path) stays."""

from __future__ import annotations

import pytest

from saekit.schemas import PublishError, RegistryError
from saekit.schemas.masking import mask, without_password

S = "s3cr3t-Value"


@pytest.mark.parametrize("text,shown", [
    (f"http://user:{S}@hub.local:8080/api", "http://user:***@hub.local:8080/api"),
    (f"http://user:{S}@x@hub.local/api", "http://user:***@hub.local/api"),  # an unencoded '@' in the password
    (f"http://:{S}@hub.local", "http://:***@hub.local"),
    (f"postgresql+psycopg2://postgres:{S}@db:5432/saekit", "postgresql+psycopg2://postgres:***@db:5432/saekit"),
    (f"https://h/x?a=1&access_token={S}&b=2", "https://h/x?a=1&access_token=***&b=2"),
    (f"https://h/x?token={S}", "https://h/x?token=***"),
    (f"https://s3/x?X-Amz-Signature={S}&X-Amz-Security-Token={S}",
     "https://s3/x?X-Amz-Signature=***&X-Amz-Security-Token=***"),
    (f"https://h/x?key={S}", "https://h/x?key=***"),
    (f"host=db password={S} sslpassword={S}", "host=db password=*** sslpassword=***"),
    (f"api_key={S}", "api_key=***"),
    (f"Authorization: Bearer {S}", "Authorization: Bearer ***"),
    ("token hf_AbCdEf123456789", "token hf_***"),
])
def test_mask_hides_the_secret_and_keeps_where(text, shown):
    assert mask(text) == shown
    assert S not in mask(text)


@pytest.mark.parametrize("text", ["http://user@hub.local/api", "expected KEY=VALUE", "sae_id layer6/a", "v1.0.0"])
def test_mask_leaves_text_without_secrets(text):
    assert mask(text) == text


def test_errors_mask_their_message_and_where():
    err = RegistryError(f"cannot open http://u:{S}@h/x", where=f"registry at http://u:{S}@h")
    assert S not in str(err) and S not in err.message and S not in (err.where or "")
    assert str(PublishError(f"x?token={S}")) == "x?token=***"


def test_without_password_keeps_the_user():
    assert without_password(f"http://u:{S}@h/x") == "http://u@h/x"


def test_counts_named_like_secrets_stay():
    assert mask("n_tokens=256 context_size=64") == "n_tokens=256 context_size=64"
