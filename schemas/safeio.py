"""The one rule for files, and bounded readers of user input.

Files: saekit reads, hashes, copies and uploads only *regular files inside the folder it
was given*. Every path below that folder is checked component by component with
``lstat`` (never following a link), and the file itself is opened with ``O_NOFOLLOW`` and
checked again on the open descriptor (``fstat``), so a symlink swapped in between the
check and the read is still refused. Refused, with one line naming the path:

- a symlink, to a file or to a folder, at any depth (its target may be anywhere);
- a device, FIFO or socket (reading a FIFO hangs, a device has no end);
- a hard-linked file (``st_nlink > 1``): its other names may lie outside the folder, and
  saekit cannot tell where, so content reached through it is refused as a symlink is
  (copy it with ``cp`` to make it an independent file);
- a relative path that leaves the folder (``..``, absolute, empty segments, backslashes,
  control characters).

The folder itself is taken as the caller named it (a link to a folder the user names on
the command line is followed once, to find the folder); everything inside it must be real.

Writing: every file saekit writes into a folder a user named goes through
:func:`write_bytes` (a temporary file renamed into place; a symlink at the destination
file or as its folder is refused, never written through).

Bounded input: :class:`Limits` holds every bound (bytes per file, bytes per line or
card, JSON nesting); :func:`load_json` applies them to one JSON document. Parsers used
on bounded input are linear, so time per line is bounded by the line bound.

Standard library only: every layer imports it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Mapping

from saekit.schemas.errors import InputError, NotFoundError, SaekitError, UnsafePathError

# --- bounds -----------------------------------------------------------------------------

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Bounds on one input file; every reader of user input takes them.

    ``max_file_bytes``: bytes read (after decompression) from one file.
    ``max_line_bytes``: bytes of one JSONL line or one card of a .json list.
    ``max_depth``: nesting of JSON arrays and objects (a card needs about 6).
    """

    max_file_bytes: int = 8 * GiB
    max_line_bytes: int = 16 * MiB
    max_depth: int = 64


DEFAULT_LIMITS = Limits()
# Small JSON documents saekit reads beside artifacts (cfg.json, eval.json, release.json,
# SHA256SUMS, the Hub's commit payloads).
JSON_LIMITS = Limits(max_file_bytes=256 * MiB, max_line_bytes=256 * MiB, max_depth=64)

_ESCAPE = re.compile(rb"\\.", re.S)
_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_SYNTAX = bytes(b for b in range(256) if b not in b'[]{}"')
_OPEN = frozenset(b"[{")


def exceeds_depth(data: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than ``limit``, in linear time.

    Escapes are removed first, so every remaining quote opens or closes a string; then
    everything but quotes and brackets, then the strings. A short bracket string is walked
    (stopping past the limit); a long one loses its innermost level per pass (``[]``,
    ``{}``), at most ``limit`` passes. Malformed text answers False: the parser reports it.
    """
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    s = data.translate(None, _NOT_SYNTAX)
    if len(s) - s.count(b'"') <= limit:
        return False
    # Adjacent quotes (an empty string, or a string's end and the next one's start) leave
    # every bracket's inside/outside unchanged; what remains is split cheaply.
    s = s.replace(b'""', b"")
    if b'"' in s:
        s = b"".join(s.split(b'"')[::2])
    # Each pass of two replaces removes at least one level and at most two: k passes to
    # empty means a depth in [k, 2k]; only an undecided k needs the exact walk.
    t, k = s, 0
    while t and k <= limit:
        u = t.replace(b"[]", b"").replace(b"{}", b"")
        if u == t:
            return False  # malformed: the parser reports it
        t, k = u, k + 1
    if k > limit:
        return True
    if 2 * k <= limit:
        return False
    if len(s) <= 1 << 16:
        depth = 0
        for c in s:
            if c in _OPEN:
                depth += 1
                if depth > limit:
                    return True
            else:
                depth -= 1
        return False
    for _ in range(limit):
        t = _PAIR.sub(b"", s)
        if not t or t == s:
            return False
        s = t
    return _PAIR.sub(b"", s) != s


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes | str, *, where: str, limits: Limits = JSON_LIMITS, allow_nan: bool = True) -> Any:
    """Parse one JSON document within ``limits``; one-line InputError naming ``where``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > limits.max_file_bytes:
        raise InputError(f"{len(raw)} bytes of JSON, over the limit of {limits.max_file_bytes}", where=where)
    if exceeds_depth(raw, limits.max_depth):
        raise InputError(f"JSON nested deeper than {limits.max_depth} levels", where=where)
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=None if allow_nan else _reject_constant)
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text (byte {err.start})", where=where) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON: {err.msg} at line {err.lineno} column {err.colno}", where=where) from None
    except (ValueError, RecursionError) as err:
        raise InputError(f"not JSON: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                         where=where) from None


YAML_MAX_BYTES = 1 << 20  # a manifest or a gate policy


def load_yaml(data: bytes, *, where: str) -> Any:
    """YAML (safe subset) within bounds: no aliases (``*name`` multiplies work downstream:
    "billion laughs"), nesting bounded by the parser's recursion; one-line errors."""
    import yaml  # a base dependency of saekit; imported where used

    class _Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("YAML aliases (*name) are not accepted")
            return super().compose_node(parent, index)

    if len(data) > YAML_MAX_BYTES:
        raise InputError(f"{len(data)} bytes of YAML, over the limit of {YAML_MAX_BYTES}", where=where)
    try:
        return yaml.load(data.decode("utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text (byte {err.start})", where=where) from None
    except RecursionError:
        raise InputError("YAML nested too deep", where=where) from None
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML ({(str(err).splitlines() or ['?'])[0]})", where=where) from None


# --- names inside a folder ----------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_relpath(rel: str, *, where: str | None = None) -> str:
    """A relative posix path that stays inside its folder (bundle files, SUMS lines, Hub
    paths, card shards): no absolute path, ``..``, ``.``, empty segment, backslash or
    control character; at most 1000 characters."""
    bad = (
        not isinstance(rel, str)
        or not rel
        or len(rel) > 1000
        or rel.startswith("/")
        or "\\" in rel
        or _CONTROL.search(rel) is not None
        or any(part in ("", ".", "..") for part in rel.split("/"))
    )
    if bad:
        raise UnsafePathError("path leaves its folder or is not a plain relative path", where=where or repr(rel))
    return rel


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


_RULE = "saekit reads only regular files inside the folder it was given"


def _refuse(path: Path, mode: int) -> UnsafePathError:
    return UnsafePathError(f"is {_kind(mode)}; {_RULE}", where=str(path))


def _check_stat(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode)
    if st.st_nlink > 1:
        raise UnsafePathError(f"is a hard link ({st.st_nlink} names); {_RULE} (copy it to make it independent)",
                              where=str(path))


def regular_file(root: str | os.PathLike, rel: str) -> Path:
    """``root/rel`` after checking every component with lstat: folders real, the file a
    regular single-link file. NotFoundError when it does not exist."""
    root = Path(root)
    check_relpath(rel, where=str(root / rel))
    path = root
    parts = PurePosixPath(rel).parts
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFoundError(f"missing {rel}", where=str(root)) from None
        except NotADirectoryError:
            raise NotFoundError(f"missing {rel}", where=str(root)) from None
        if i < len(parts) - 1:
            if not stat.S_ISDIR(st.st_mode):
                raise _refuse(path, st.st_mode)
        else:
            _check_stat(path, st)
    return path


def exists(root: str | os.PathLike, rel: str) -> bool:
    """Whether ``root/rel`` exists at all (as anything; reading it applies the rule)."""
    try:
        os.lstat(Path(root) / rel)
        return True
    except OSError:
        return False


def named_path(path: str | os.PathLike) -> Path:
    """The file or folder the user named, a link there followed now, once (as check_tree
    follows it): every later open is O_NOFOLLOW on the real name, so a link swapped in
    after the check is refused, never followed."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def open_regular(root: str | os.PathLike, rel: str) -> IO[bytes]:
    """Open ``root/rel`` for reading under the rule (lstat walk, O_NOFOLLOW, fstat)."""
    path = regular_file(root, rel)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise UnsafePathError(f"cannot open ({err.strerror}); {_RULE}", where=str(path)) from None
    try:
        _check_stat(path, os.fstat(fd))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bytes(root: str | os.PathLike, rel: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of ``root/rel`` under the rule; ``max_bytes`` bounds what is read."""
    with open_regular(root, rel) as f:
        if max_bytes is None:
            return f.read()
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"larger than the limit of {max_bytes} bytes", where=str(Path(root) / rel))
    return data


def sha256(root: str | os.PathLike, rel: str) -> str:
    """sha256 of ``root/rel`` under the rule, streamed."""
    h = hashlib.sha256()
    with open_regular(root, rel) as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def copy_file(root: str | os.PathLike, rel: str, dest: str | os.PathLike) -> Path:
    """Copy ``root/rel`` (under the rule) to ``dest`` with :func:`write_bytes`, streamed."""
    with open_regular(root, rel) as src:
        return write_bytes(dest, iter(lambda: src.read(1 << 22), b""))


_WRITE_RULE = "saekit never writes through a link (name the real path to write there)"


def check_writable(*dests: str | os.PathLike) -> None:
    """Refuse now what :func:`write_bytes` would refuse later (a symlinked folder, a
    destination that is a link or not a regular file), so that work that ends in several
    files fails before it starts and never leaves some of them written."""
    for dest in map(Path, dests):
        for path, allowed in ((dest.parent, stat.S_ISDIR), (dest, stat.S_ISREG)):
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                break  # created by the write
            if not allowed(st.st_mode):
                raise UnsafePathError(f"is {_kind(st.st_mode)}; {_WRITE_RULE}", where=str(path))


def check_new_or_same(wanted: Mapping[str | os.PathLike, str]) -> None:
    """Refuse to replace a file saekit may not have written. Commands that write fixed names
    (cfg.json, ...) into a folder the user gave (export, pull) must not overwrite the user's
    own file of that name: each destination is missing, or already holds exactly the bytes
    (``wanted``: path -> sha256) about to be written. Runs :func:`check_writable` first."""
    check_writable(*wanted)
    for dest, digest in wanted.items():
        dest = Path(dest)
        if os.path.lexists(dest) and sha256(dest.parent, dest.name) != digest:
            raise InputError("exists with other content; saekit replaces no file it did not write "
                             "(remove it, or choose a new or empty folder)", where=str(dest))


def write_bytes(dest: str | os.PathLike, data: bytes | Iterable[bytes]) -> Path:
    """Write ``dest`` as a new regular file: the one way saekit writes a file.

    ``data`` (bytes, or pieces of it, streamed) goes to a new temporary file in ``dest``'s
    folder (``O_EXCL``, opened through a descriptor of that folder), renamed into place: a
    reader never sees half a file, and an error leaves the old file as it was. A symlink
    (or anything but a regular file) at ``dest``, or a symlink as ``dest``'s folder, is
    refused with UnsafePathError: a planted link must not redirect the write. Missing
    folders are created; other failures are InputError ``cannot write``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePathError(f"is a symlink; {_WRITE_RULE}", where=str(dest.parent)) from None
        raise InputError(f"cannot write: {err.strerror or err}", where=str(dest)) from None
    tmp = f".{dest.name}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            st = os.lstat(dest.name, dir_fd=dir_fd)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"is {_kind(st.st_mode)}; {_WRITE_RULE}", where=str(dest))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as out:
                for piece in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                    out.write(piece)
            os.replace(tmp, dest.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    except SaekitError:
        raise
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", where=str(dest)) from None
    finally:
        os.close(dir_fd)
    return dest


def list_files(root: str | os.PathLike, *, max_files: int = 100_000) -> list[str]:
    """Every file under ``root`` as sorted posix relative paths, refusing anything that is
    not a real folder or a regular single-link file, at any depth."""
    root = Path(root)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise NotFoundError("no such folder", where=str(root)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError("not a folder", where=str(root))
    out: list[str] = []
    stack = [""]
    while stack:
        prefix = stack.pop()
        with os.scandir(root / prefix if prefix else root) as it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel + "/")
                    continue
                _check_stat(root / rel, st)
                check_relpath(rel, where=str(root / rel))
                out.append(rel)
                if len(out) > max_files:
                    raise InputError(f"more than {max_files} files", where=str(root))
    return sorted(out)


def check_tree(path: str | os.PathLike) -> None:
    """A file or folder given as input: a regular file, or a folder of only regular files."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFoundError("no such file or folder", where=str(path)) from None
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(path)  # the path the user named: followed once
    if stat.S_ISDIR(st.st_mode):
        list_files(path)
    else:
        _check_stat(path, st)
