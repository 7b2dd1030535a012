"""Every error a user can cause, in one module, grouped by concern.

Each inherits from the builtin callers already catch (ValueError, LookupError, OSError),
carries structured fields beside its message, and knows the CLI exit code it maps to:
1 when a check failed (validation, integrity, gate), 2 for usage or input errors.
The CLI prints ``str(err)`` as one line and never a traceback.
"""

from __future__ import annotations

from saekit.schemas.masking import mask


class SaekitError(Exception):
    """Base of every user-facing saekit error. Message: ``what: where``, with secrets
    (URL passwords, tokens) masked, whatever text a caller put in it."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None):
        self.message = mask(message)
        self.where = mask(where) if where is not None else None
        message, where = self.message, self.where
        super().__init__(f"{where}: {message}" if where else message)


# --- input and usage -------------------------------------------------------------------


class InputError(SaekitError, ValueError):
    """Bad input a user gave: ``cfg.json: d_sae must be > 0``."""


class ReferenceSyntaxError(InputError):
    """A reference string that cannot be parsed: ``bad reference 'a@@b': ...``."""


class ArtifactFormatError(InputError):
    """A file that is not what it claims: ``sae_weights.safetensors: header truncated``."""


class UnsafePathError(InputError):
    """A path saekit refuses to read, copy or upload: ``x/sparsity.safetensors: is a symlink; ...``.

    saekit reads only regular files inside the folder it was given (saekit.schemas.safeio).
    """


class UnsupportedSAEError(ArtifactFormatError):
    """A saved SAE setting saekit does not compute exactly as sae-lens, refused rather than
    loaded with different maths: ``cfg.json: normalize_activations 'covariance_whitening' is
    not supported (...)``."""


class NotFoundError(SaekitError, LookupError):
    """A name, version, alias or file that does not exist: ``no version 7 of 'my-sae'``."""


# --- checks that failed (exit 1) -------------------------------------------------------


class IntegrityError(SaekitError, OSError):
    """Content whose sha256 does not match its record: ``sae_weights.safetensors: sha256 mismatch``."""

    exit_code = 1


class CardValidationError(SaekitError, ValueError):
    """One or more feature cards are invalid; ``errors`` holds every ``file:line: path: msg``."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, errors: list[str] | None = None):
        super().__init__(message, where=where)
        self.errors = errors or []


class GateFailedError(SaekitError):
    """A release gate did not pass: ``gate failed for 'sae-a': explained_variance 0.61 < 0.7``."""

    exit_code = 1


# --- services --------------------------------------------------------------------------


class RegistryError(SaekitError, RuntimeError):
    """The registry (MLflow) refused or could not be reached: ``registry at http://...: ...``."""


class HubError(SaekitError, OSError):
    """The Hub could not be reached or refused a request:
    ``hf://org/repo: cannot reach the Hub at http://...: ConnectError (...)``."""


class PublishError(SaekitError, RuntimeError):
    """Publishing to the Hub failed or was refused: ``repo org/x changed since the parent commit``."""


class EndpointError(SaekitError, RuntimeError):
    """A language-model endpoint failed or gave an unusable answer:
    ``http://127.0.0.1:8000/v1/chat/completions: HTTP 400 (not retried)``. ``cards explain``
    records it on the latent's annotation rather than stopping the run."""


def first_problem(err: Exception) -> str:
    """``field.path: message`` of a pydantic ValidationError's first problem (the message alone
    at the root), or the first line of any other error: the one-line form of a bad input."""
    errors = getattr(err, "errors", None)
    if callable(errors) and errors():
        e = errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        return f"{loc}: {e['msg']}" if loc else e["msg"]
    return str(err).splitlines()[0]
