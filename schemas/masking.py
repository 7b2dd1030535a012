"""The one masking function for secrets in text that saekit prints, logs or returns.

Every URL or message that may carry one (a Hub endpoint, an MLflow tracking URI, a
library's error line) goes through ``mask`` before it is shown: error messages
(``SaekitError`` masks its own), the CLI's last line of defence, ``publish --json``'s ``url``,
``saekit show``'s source. It lives here, in the lowest layer, so that every layer uses the
same one.
"""

from __future__ import annotations

import re

# scheme://user:password@host: the password is everything up to the last '@' before the host
# (an unencoded '@' in a password must not leave its tail shown).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/\s]*)@")
# key=value where the key names a secret: password=, pwd=, token=, access_token=, api_key=,
# X-Amz-Signature=, X-Amz-Credential=, client_secret= (query strings, libpq DSNs), and the
# short query keys ?key= ?sig= ?auth= ?code= (only after ? or &: "KEY=VALUE" is prose).
_SECRET_PARAM = re.compile(
    r"(?i)(?<![\w.-])(?P<key>[\w.-]*(?:token(?!s)|passw(?:or)?d|pwd|secret|credential|signature"
    r"|(?:api|access|private|account|sas|subscription)[_-]?key)[\w.-]*"
    r"|(?<=[?&])(?:key|sig|auth|code|pw|pass))=(?P<value>[^&;\s#'\"]+)")
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{6,}")
_AUTH_HEADER = re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def mask(text: object) -> str:
    """``text`` with URL passwords, secret-named parameters, Hub tokens and Authorization
    credentials replaced by ``***`` (user names and hosts stay: they say where)."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    out = _AUTH_HEADER.sub(lambda m: f"{m['kind']} ***", out)
    out = _HF_TOKEN.sub("hf_***", out)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}=***", out)


def without_password(uri: str) -> str:
    """``uri`` with the password of its user info removed (for stable keys, not display)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}@", uri)
