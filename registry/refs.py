"""References to SAE artifacts, parsed in one place.

    NAME                      newest ready version
    NAME@ALIAS                e.g. smollm2-res-l6@production
    NAME/VERSION              e.g. smollm2-res-l6/3
    NAME@sha256:PREFIX        at least 8 hex digits of the artifact sha256
    hf://[TYPE/]ORG/REPO[@REV]/PATH
                              a file or folder on the Hub, in huggingface_hub's URI form
                              (huggingface_hub.utils.parse_hf_uri; REV: tag, branch or
                              commit, default main): a saekit release's SAE, or a
                              checkpoint of another library (registry.hub_source)
    saelens:RELEASE/SAE_ID    an SAE of SAELens' pretrained_saes.yaml catalogue
    PATH                      a canonical artifact folder, written as a path: /abs, ./rel, ../rel, ~/rel
                              (or passed as a pathlib.Path / os.PathLike)

A registry name never resolves to a local folder: ``prod-sae`` is the registry's
``prod-sae`` even when the working directory holds a ``prod-sae/`` folder; that folder
is ``./prod-sae``. Every pattern is matched whole (``re.fullmatch``): a trailing newline
or any other character outside the grammar is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saekit.schemas import ReferenceSyntaxError
from saekit.schemas.console import has_control

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_RE)
_REGISTRY = re.compile(
    rf"(?P<name>{NAME_RE})"
    r"(?:@sha256:(?P<sha>[0-9a-f]{8,64})|@(?P<alias>[A-Za-z][A-Za-z0-9_-]{0,63})|/(?P<version>[1-9][0-9]{0,17}))?"
)
_SAELENS = re.compile(r"saelens:(?P<release>[A-Za-z0-9][\w.-]*)/(?P<sae_id>\S+)")
# The form saekit used before following huggingface_hub's: hf://ORG/REPO/SAE_ID@REV.
_OLD_HF = re.compile(r"hf://(?P<repo>[^/@]+/[^/@]+)/(?P<path>[^@]+)@(?P<rev>[^/@]+)")
_PATH_PREFIXES = ("/", "./", "../", "~")
_BAD_PATH_CHARS = re.compile(r"[\s\x00-\x1f\x7f\\]")

Kind = Literal["latest", "alias", "version", "sha256", "path", "hf", "saelens"]


@dataclass(frozen=True)
class Ref:
    """A parsed reference; which fields are set depends on ``kind``."""

    kind: Kind
    text: str
    name: str | None = None
    alias: str | None = None
    version: int | None = None
    sha256_prefix: str | None = None
    path: Path | None = None
    hf_repo: str | None = None
    sae_id: str | None = None
    revision: str | None = None
    hf_type: str = "model"
    saelens_release: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether the reference names fixed content (cacheable without asking the server)."""
        return self.kind in ("version", "sha256", "path") or (
            self.kind == "hf" and bool(re.fullmatch(r"[0-9a-f]{40}", self.revision or ""))
        )

    def __str__(self) -> str:
        return self.text


def check_name(name: str) -> str:
    """A registered-model name: letters, digits, '.', '_', '-' (MLflow- and URI-safe)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ReferenceSyntaxError(
            "name must be 1-128 of letters, digits, '.', '_', '-' and start with a letter or digit",
            where=repr(name),
        )
    return name


def parse_ref(text: str | os.PathLike) -> Ref:
    """Parse a reference; raises ReferenceSyntaxError with the reason.

    A ``pathlib.Path`` (any os.PathLike) is a local folder; a string is a local folder
    only when written as a path (``/``, ``./``, ``../``, ``~``): never by a folder of that
    name existing in the working directory.
    """
    if isinstance(text, os.PathLike):
        path = Path(text).expanduser()
        return Ref("path", os.fspath(text), path=path)
    if not isinstance(text, str):
        raise ReferenceSyntaxError(f"a reference is a string, not {type(text).__name__}")
    if text != text.strip():
        raise ReferenceSyntaxError("reference has leading or trailing whitespace", where=repr(text))
    if not text:
        raise ReferenceSyntaxError("empty reference")
    if "\x00" in text:
        raise ReferenceSyntaxError("reference contains a NUL character", where=repr(text))
    if has_control(text) and not text.startswith(_PATH_PREFIXES):  # a name, sae_id or revision: one printable line
        raise ReferenceSyntaxError("reference contains a control character", where=repr(text))
    if text.startswith("hf://"):
        return parse_hf(text)
    if text.startswith("saelens:"):
        m = _SAELENS.fullmatch(text)
        if not m or ".." in m["sae_id"].split("/"):
            raise ReferenceSyntaxError("expected saelens:RELEASE/SAE_ID", where=repr(text))
        return Ref("saelens", text, saelens_release=m["release"], sae_id=m["sae_id"])
    if text.startswith(_PATH_PREFIXES):
        return Ref("path", text, path=Path(text).expanduser())
    m = _REGISTRY.fullmatch(text)
    if not m:
        hint = f" (a local folder is written as a path: ./{text})" if "/" in text or Path(text).exists() else ""
        raise ReferenceSyntaxError(
            "expected NAME, NAME@ALIAS, NAME/VERSION, NAME@sha256:PREFIX, hf://ORG/REPO[@REV]/PATH, saelens:RELEASE/SAE_ID "
            "or a folder path (/abs, ./rel)" + hint,
            where=repr(text),
        )
    if m["sha"]:
        return Ref("sha256", text, name=m["name"], sha256_prefix=m["sha"])
    if m["alias"]:
        return Ref("alias", text, name=m["name"], alias=m["alias"])
    if m["version"]:
        return Ref("version", text, name=m["name"], version=int(m["version"]))
    return Ref("latest", text, name=m["name"])


def parse_hf(text: str) -> Ref:
    """``hf://[TYPE/]ORG/REPO[@REV]/PATH`` parsed by huggingface_hub's own URI parser.

    The earlier saekit form ``hf://ORG/REPO/PATH@REV`` is refused with the new spelling.
    """
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    try:
        uri = parse_hf_uri(text)
    except HfUriError as err:
        msg = getattr(err, "msg", None) or str(err).splitlines()[0]
        raise ReferenceSyntaxError(f"expected hf://[TYPE/]ORG/REPO[@REV]/PATH ({msg})", where=repr(text)) from None
    path = uri.path_in_repo.strip("/")
    old = _OLD_HF.fullmatch(text)
    if uri.revision is None and old and "@" in path:
        raise ReferenceSyntaxError(
            f"hf:// references follow huggingface_hub's form: write hf://{old['repo']}@{old['rev']}/{old['path']}",
            where=repr(text),
        )
    if uri.type == "bucket":
        raise ReferenceSyntaxError("buckets hold no versioned SAEs; name a model or dataset repo", where=repr(text))
    if any(part in (".", "..") for part in path.split("/") + (uri.revision or "").split("/")):
        raise ReferenceSyntaxError("'.' and '..' are not allowed in an hf:// path or revision", where=repr(text))
    if uri.revision is None and "@" in path:
        raise ReferenceSyntaxError("hf:// references put the revision after the repo: hf://ORG/REPO@REV/PATH",
                                   where=repr(text))
    if _BAD_PATH_CHARS.search(path):
        raise ReferenceSyntaxError("an hf:// path holds no whitespace, control characters or backslashes",
                                   where=repr(text))
    return Ref("hf", text, hf_repo=uri.id, sae_id=path, revision=uri.revision or "main", hf_type=uri.type)


def hf_uri(repo: str, revision: str, path: str, repo_type: str = "model") -> str:
    """The canonical ``hf://`` text of a repo, revision and path (huggingface_hub's form)."""
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"hf://{prefix}{repo}@{revision}" + (f"/{path}" if path else "")
