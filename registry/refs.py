"""References to SAE artifacts, parsed in one place.

    NAME                      newest ready version
    NAME@ALIAS                e.g. smollm2-res-l6@production
    NAME/VERSION              e.g. smollm2-res-l6/3
    NAME@sha256:PREFIX        at least 8 hex digits of the artifact sha256
    hf://ORG/REPO/SAE_ID@REV  a published release (REV: tag, branch or commit; default main)
    PATH                      a canonical artifact folder (absolute, ./, ../, ~, or existing)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saekit.schemas import ReferenceSyntaxError

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(rf"^{NAME_RE}$")
_REGISTRY = re.compile(
    rf"^(?P<name>{NAME_RE})"
    r"(?:@sha256:(?P<sha>[0-9a-f]{8,64})|@(?P<alias>[A-Za-z][A-Za-z0-9_-]{0,63})|/(?P<version>[1-9][0-9]*))?$"
)
_HF = re.compile(
    r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/(?P<sae_id>[^@]+?)(?:@(?P<rev>[\w./-]+))?$"
)

Kind = Literal["latest", "alias", "version", "sha256", "path", "hf"]


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
    if not _NAME.match(name or ""):
        raise ReferenceSyntaxError(
            "name must be 1-128 of letters, digits, '.', '_', '-' and start with a letter or digit",
            where=repr(name),
        )
    return name


def parse_ref(text: str) -> Ref:
    """Parse a reference string; raises ReferenceSyntaxError with the reason."""
    text = str(text).strip()
    if not text:
        raise ReferenceSyntaxError("empty reference")
    if text.startswith("hf://"):
        m = _HF.match(text)
        if not m or ".." in m["sae_id"].split("/"):
            raise ReferenceSyntaxError("expected hf://ORG/REPO/SAE_ID[@REVISION]", where=repr(text))
        return Ref("hf", text, hf_repo=m["repo"], sae_id=m["sae_id"].strip("/"), revision=m["rev"] or "main")
    if text.startswith(("/", "./", "../", "~")) or Path(text).is_dir():
        return Ref("path", text, path=Path(text).expanduser())
    m = _REGISTRY.match(text)
    if not m:
        raise ReferenceSyntaxError(
            "expected NAME, NAME@ALIAS, NAME/VERSION, NAME@sha256:PREFIX, hf://... or a folder path",
            where=repr(text),
        )
    if m["sha"]:
        return Ref("sha256", text, name=m["name"], sha256_prefix=m["sha"])
    if m["alias"]:
        return Ref("alias", text, name=m["name"], alias=m["alias"])
    if m["version"]:
        return Ref("version", text, name=m["name"], version=int(m["version"]))
    return Ref("latest", text, name=m["name"])
