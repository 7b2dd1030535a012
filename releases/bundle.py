"""Build a release bundle (Hugging Face repo layout) from a manifest and the registry.

    README.md                       model card (YAML front matter, SAE table, plots, how to load)
    <sae_id>/cfg.json               canonical artifact (SAELens v6 layout)
    <sae_id>/sae_weights.safetensors
    <sae_id>/eval.json              the BenchmarkRecord logged by the check
    <sae_id>/feature_cards.jsonl    FeatureCards (or feature_cards/part-NNNNN-of-MMMMM.jsonl.gz shards)
    plots/*.png                     feature density, L0 vs explained variance
    browser/index.html              static feature browser (data inlined)
    pretrained_saes.yaml            the release as a SAELens registry entry (releases.ecosystem)
    release.json                    manifest, pinned versions, benchmark records, file hashes
    SHA256SUMS                      sha256 of every other file (``sha256sum -c`` format)

Every reference is pinned to a registry version and its sha256 first; nothing goes in
without a passing gate. The same manifest and registry state give a byte-identical bundle:
no clock, no random ids, sorted keys, deterministic plots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from saekit.registry.artifact import sha256_file
from saekit.releases.gate import checked_record
from saekit.releases.manifest import load_manifest
from saekit.releases.ecosystem import write_saelens_registry
from saekit.releases import annotations
from saekit.releases.modelcard import SAEEntry, metrics_of
from saekit.schemas import (
    ArtifactFormatError,
    FeatureCard,
    InputError,
    IntegrityError,
    NotFoundError,
    ReleaseManifest,
    UnsafePathError,
    card_files,
    safeio,
)
from saekit.schemas.errors import first_problem
from saekit.schemas.release import BUNDLE_FORMAT, BundlePin, BundleSAE, ReleaseBundle
from saekit.schemas.console import say
from saekit.schemas.version import __version__

SUMS = "SHA256SUMS"
RELEASE_JSON = "release.json"
# The Hub allows 10k entries per folder and recommends files under a few GB; feature cards
# of wide SAEs are split into gzip shards of at most this many cards (one JSON line each)
# and this many uncompressed bytes, so a 16k-latent SAE is 8 files of a few MB
# (saekit.schemas.card_files.write_card_shards).
CARDS_PER_SHARD = 2048
SHARD_BYTES = 256 * 2**20
ARTIFACT_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


# --- build -----------------------------------------------------------------------------


def build(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    run_checks: bool = True,
    force: bool = False,
    cards_per_shard: int = CARDS_PER_SHARD,
) -> Path:
    """Build the bundle of ``manifest_path`` into ``out_dir``; returns ``out_dir``.

    ``run_checks``: run ``saekit check`` on a version that has no recorded gate (else refuse).
    ``force``: replace ``out_dir`` when it holds a bundle saekit wrote (see :func:`check_out`).
    """
    manifest = load_manifest(manifest_path)
    return build_from_manifest(manifest, out_dir, run_checks=run_checks, force=force,
                               cards_per_shard=cards_per_shard, where=str(manifest_path),
                               base_dir=Path(manifest_path).parent)


def check_out(out_dir: str | os.PathLike, *, force: bool) -> Path:
    """The absolute ``--out`` folder, if saekit may write there: it is not a symlink nor
    reached through one, and it is missing, empty, or (with ``force``) an intact bundle that
    saekit wrote (:func:`verify`: release.json parses as saekit's ReleaseBundle, every file is
    listed in SHA256SUMS). Anything else may hold the user's files, and saekit never deletes
    what it did not write."""
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.resolve() != out:
        raise UnsafePathError("is a symlink or lies under one; give the real folder", where=str(out))
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not out.is_dir():
        raise InputError("exists and is not a folder; refusing to overwrite it", where=str(out))
    try:
        verify(out)
    except (InputError, IntegrityError, NotFoundError):
        raise InputError("is not empty and not a saekit bundle; refusing to replace it "
                         "(saekit deletes only bundles it built)", where=str(out)) from None
    if not force:
        raise InputError("holds a saekit bundle; pass --force to replace it", where=str(out))
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished bundle ``tmp`` into ``out``; an old bundle there is moved aside
    first and removed only after, file by file as its SHA256SUMS lists them, so a file that
    appeared in it since the check stays (with its folder, named in a warning)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    listed = list(read_sums(out)) + [SUMS]
    try:
        os.rename(out, old)  # onto the empty folder mkdtemp made
    except OSError:
        old.rmdir()
        raise
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    for rel in listed:
        with contextlib.suppress(FileNotFoundError):
            (old / rel).unlink()
    for folder in sorted({p for rel in listed for p in (old / rel).parents if old in p.parents}, reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    try:
        old.rmdir()
    except OSError:
        say(f"release: warning: {old} holds files that were not part of the old bundle; left in place")


def build_from_manifest(
    manifest: ReleaseManifest,
    out_dir: str | os.PathLike,
    *,
    run_checks: bool = True,
    force: bool = False,
    cards_per_shard: int = CARDS_PER_SHARD,
    where: str = "manifest",
    base_dir: Path | None = None,
) -> Path:
    """:func:`build` for a manifest already in memory (validated by ReleaseManifest: sae_ids
    unique, not nested, not a bundle file's name). ``base_dir``: where the manifest's relative
    ``cards`` paths start (default: the current folder)."""
    from saekit.registry import store

    out = check_out(out_dir, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        entries, cards_by_id, records = _write_saes(manifest, tmp, store, run_checks, cards_per_shard, where,
                                                 base_dir or Path("."))
        plots = _write_plots(tmp, entries, cards_by_id)
        _write_browser(tmp, manifest, entries, cards_by_id)
        from saekit.releases.modelcard import render

        (tmp / "README.md").write_text(render(manifest, entries, plots=plots), encoding="utf-8")
        write_saelens_registry(tmp, manifest, entries)
        _write_release_json(tmp, manifest, entries, records)
        write_sums(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700; a bundle folder is an ordinary folder
        check_out(out, force=force)  # still what it was when the build began
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"release: built {manifest.release_id} v{manifest.version} ({len(entries)} SAEs) at {out}")
    return out


def _write_saes(manifest, tmp: Path, store, run_checks: bool, cards_per_shard: int, where: str, base_dir: Path):
    entries: list[SAEEntry] = []
    cards_by_id: dict[str, list[dict[str, Any]]] = {}
    records: dict[str, Any] = {}
    for rs in manifest.saes:
        info, record, checks = checked_record(manifest.gate, f"'{rs.ref}'", store.resolve(rs.ref),
                                              run_checks=run_checks, where=where)
        pinned = f"{info.name}/{info.version}"
        dest = tmp / rs.sae_id
        dest.mkdir(parents=True)
        safeio.copy_file(checks["eval.json"].parent, "eval.json", dest / "eval.json")
        records[rs.sae_id] = json.loads((dest / "eval.json").read_text())
        src = Path(store.fetch(pinned))
        for name in ARTIFACT_FILES:
            if safeio.exists(src, name):
                safeio.copy_file(src, name, dest / name)
        from saekit.registry.artifact import artifact_sha256

        got = artifact_sha256(dest)
        if got != info.sha256:
            raise IntegrityError(f"artifact sha256 {got[:12]} != registered {info.sha256[:12]}", where=pinned)
        cfg = json.loads((dest / "cfg.json").read_text())
        cards: list[dict[str, Any]] = []
        files: list[str] = []
        src_cards = checks.get("feature_cards.jsonl")
        if rs.cards is not None:
            src_cards = base_dir / rs.cards
            _check_cards_of(src_cards, info.sha256)
        if src_cards is not None:
            safeio.regular_file(src_cards.parent, src_cards.name)
            cards = card_files.read_rows(src_cards)  # dicts, for the plots and the browser
            written = card_files.write_card_shards(src_cards, dest, per_shard=cards_per_shard, max_bytes=SHARD_BYTES)
            files = [f"{rs.sae_id}/{name}" for name in written]
        cards_by_id[rs.sae_id] = cards
        explained, failed = annotations.explained_counts(cards)
        entries.append(SAEEntry(rs.sae_id, rs.ref, info.name, int(info.version), info.sha256, cfg, record,
                                "pass", len(cards), files, explained, failed, annotations.score_means(cards)))
        say(f"release: {rs.sae_id} <- {pinned} sha256 {info.sha256[:12]} ({len(cards)} cards)")
    return entries, cards_by_id, records


def _check_cards_of(path: Path, sha256: str) -> None:
    """Cards a manifest names (``cards:``) are valid cards of the SAE being released (its sha256):
    annotated cards of another SAE, or of another version, are refused before anything is written."""
    if path.suffix != ".jsonl":
        raise InputError("cards: must name a .jsonl file (what cards explain and cards score write)", where=str(path))
    safeio.regular_file(path.parent, path.name)  # no link, no device: before reading it
    for card in card_files.read_cards(path):
        if card.sae.sha256 != sha256:
            raise IntegrityError(f"latent {card.index}'s card is for SAE sha256 {(card.sae.sha256 or 'none')[:12]}, "
                                 f"not the released {sha256[:12]}", where=str(path))


def latent_densities(entry: SAEEntry, folder: Path, cards: list[dict]) -> tuple[list[float], int | None]:
    """Feature density of every latent and the token count it is over, for the plots.

    First choice: the check's per-latent details in the record (fire count / evaluated
    tokens of every latent, the numbers behind the record's dead_fraction and frac_alive);
    then SAELens' sparsity.safetensors (log10 density per latent); only then the carded
    latents (the histogram's legend says "N of d_sae latents")."""
    rec = entry.record
    d_sae = entry.cfg.get("d_sae")
    if rec is not None and rec.eval_result_details and len(rec.eval_result_details) == d_sae:
        tokens = (rec.eval_result_metrics.get("token_stats") or {}).get("total_tokens_evaluated")
        if tokens is None and rec.data is not None:
            tokens = rec.data.n_tokens
        by_index = sorted(rec.eval_result_details, key=lambda d: d.get("index", 0))
        return [max(0.0, float(d.get("feature_density", 0.0))) for d in by_index], int(tokens) if tokens else None
    n_tokens = rec.data.n_tokens if rec is not None and rec.data is not None else None
    sparsity = folder / "sparsity.safetensors"
    if sparsity.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load

        from saekit.registry.artifact import check_safetensors_header

        data = safeio.read_bytes(folder, sparsity.name)
        check_safetensors_header(data, f"{entry.ref}: sparsity.safetensors")
        try:
            logs = load(data).get("sparsity")
        except (SafetensorError, ValueError) as err:
            raise ArtifactFormatError(f"unreadable safetensors ({err})", where=f"{entry.ref}: sparsity.safetensors") from None
        if logs is not None:
            return [float(10.0 ** v) if v > -30 else 0.0 for v in logs.reshape(-1).tolist()], n_tokens
    return [float((c.get("stats") or {}).get("density", 0.0)) for c in cards if c.get("stats")], n_tokens


def _write_plots(tmp: Path, entries: list[SAEEntry], cards_by_id) -> list[tuple[str, str]]:
    from saekit.releases import plots

    (tmp / "plots").mkdir()
    out: list[tuple[str, str]] = []
    densities: dict[str, list[float]] = {}
    n_tokens: dict[str, int | None] = {}
    for e in entries:
        densities[e.sae_id], n_tokens[e.sae_id] = latent_densities(e, tmp / e.sae_id, cards_by_id[e.sae_id])
    densities = {k: v for k, v in densities.items() if v}
    if densities:
        widths = {e.sae_id: e.cfg.get("d_sae") for e in entries}
        (tmp / "plots" / "feature_density.png").write_bytes(plots.density_histogram(densities, n_tokens, widths))
        out.append(("Feature density (log10 fraction of tokens each latent fires on)", "plots/feature_density.png"))
    points = {e.sae_id: (metrics_of(e.record).get("l0"), metrics_of(e.record).get("explained_variance")) for e in entries}
    if any(l0 is not None and ev is not None for l0, ev in points.values()):
        (tmp / "plots" / "l0_vs_explained_variance.png").write_bytes(plots.l0_vs_explained_variance(points))
        out.append(("L0 vs explained variance", "plots/l0_vs_explained_variance.png"))
    if not out:
        (tmp / "plots").rmdir()
    return out


def _write_browser(tmp: Path, manifest: ReleaseManifest, entries: list[SAEEntry], cards_by_id) -> None:
    from saekit.releases.browser import render

    (tmp / "browser").mkdir()
    page = render(
        f"{manifest.release_id} v{manifest.version} feature browser",
        [(e.sae_id, e.cfg.get("d_sae"), cards_by_id[e.sae_id]) for e in entries],
    )
    (tmp / "browser" / "index.html").write_text(page, encoding="utf-8")


def _write_release_json(tmp: Path, manifest: ReleaseManifest, entries: list[SAEEntry], records: dict[str, Any]) -> None:
    stamps = [r.datetime_epoch_millis for r in (e.record for e in entries) if r is not None]
    release = ReleaseBundle(
        format=BUNDLE_FORMAT,
        release_id=manifest.release_id,
        version=manifest.version,
        tag=f"v{manifest.version}",
        hub_repo=manifest.hub_repo,
        # From the records, never the clock: rebuilding gives the same bytes.
        built_from_epoch_millis=max(stamps) if stamps else None,
        saekit_version=__version__,
        manifest=manifest,
        saes=[
            BundleSAE(
                sae_id=e.sae_id,
                ref=e.ref,
                registry=BundlePin(name=e.name, version=e.version),
                sha256=e.sha256,
                gate="pass",  # checked_record let it in
                eval_id=e.record.eval_id if e.record is not None else None,
                metrics=metrics_of(e.record),
                d_in=e.cfg.get("d_in"),
                d_sae=e.cfg.get("d_sae"),
                architecture=e.cfg.get("architecture"),
                n_cards=e.n_cards,
                card_files=e.card_files,
            )
            for e in entries
        ],
        records=records,
        files={p: sha256_file(tmp / p) for p in _listing(tmp)},
    )
    (tmp / RELEASE_JSON).write_bytes(_dumps(release.model_dump(mode="json")))


# --- hashes ----------------------------------------------------------------------------


def _listing(root: Path) -> list[str]:
    """Every file under root (posix paths, sorted), except SHA256SUMS and release.json;
    a symlink, device, FIFO or hard link anywhere in the bundle is refused (safeio)."""
    return [p for p in safeio.list_files(root) if p not in (SUMS, RELEASE_JSON)]


def write_sums(root: Path) -> None:
    """SHA256SUMS over every file of the bundle (release.json included), sha256sum format."""
    paths = _listing(root) + ([RELEASE_JSON] if (root / RELEASE_JSON).is_file() else [])
    lines = [f"{safeio.sha256(root, p)}  {p}\n" for p in sorted(paths)]
    (root / SUMS).write_text("".join(lines), encoding="utf-8")


_SUMS_LINE = re.compile(r"(?P<digest>[0-9a-f]{64})  (?P<path>[^\n]+)")
MAX_SUMS_BYTES = 64 << 20


def parse_sums(text: str | bytes, *, where: str) -> dict[str, str]:
    """``path -> sha256`` of a SHA256SUMS text; every path a plain relative path (safeio)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise IntegrityError(f"not UTF-8 text (byte {err.start})", where=where) from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        m = _SUMS_LINE.fullmatch(line)
        if not m:
            raise IntegrityError(f"line {n}: not '<sha256>  <path>'", where=where)
        try:
            safeio.check_relpath(m["path"])
        except InputError:
            raise IntegrityError(f"line {n}: path {m['path']!r} leaves the bundle", where=where) from None
        if m["path"] in out:
            raise IntegrityError(f"line {n}: {m['path']} listed twice", where=where)
        out[m["path"]] = m["digest"]
    return out


def read_sums(root: Path) -> dict[str, str]:
    """The bundle's SHA256SUMS, read under the file rule and bounded."""
    if not safeio.exists(root, SUMS):
        raise NotFoundError(f"no {SUMS}: not a saekit bundle", where=str(root))
    return parse_sums(safeio.read_bytes(root, SUMS, max_bytes=MAX_SUMS_BYTES), where=str(root / SUMS))


def check_listing(present: set[str], sums: dict[str, str], *, where: str) -> None:
    """The files of a bundle (SHA256SUMS aside) are exactly those SHA256SUMS lists, release.json among them."""
    for path in sorted(present - set(sums)):
        raise IntegrityError(f"{path}: not listed in {SUMS}", where=where)
    for path in sums:
        if path not in present:
            raise IntegrityError(f"{path}: listed in {SUMS} but missing", where=where)
    if RELEASE_JSON not in sums:
        raise IntegrityError(f"{RELEASE_JSON} missing", where=where)


def parse_release(data: bytes, sums: dict[str, str], *, where: str) -> ReleaseBundle:
    """release.json's bytes, parsed as saekit's ReleaseBundle and listing every file of
    SHA256SUMS; IntegrityError (one line) otherwise."""
    from pydantic import ValidationError

    try:
        safeio.load_json(data, where=where)  # bounded in size and nesting before pydantic reads it
        release = ReleaseBundle.model_validate_json(data)
    except InputError as err:
        raise IntegrityError(err.message, where=err.where) from None
    except ValidationError as err:
        raise IntegrityError(f"not a saekit release.json ({first_problem(err)})", where=where) from None
    if set(release.files) | {RELEASE_JSON} != set(sums):
        raise IntegrityError(f"its files are not those {SUMS} lists", where=where)
    return release


def verify(bundle_dir: str | os.PathLike) -> ReleaseBundle:
    """Check a bundle against its SHA256SUMS (every file listed, every hash matching, no
    extra files) and its release.json against saekit's ReleaseBundle; returns release.json."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise NotFoundError("no such bundle folder", where=str(root))
    sums = read_sums(root)
    check_listing(set(safeio.list_files(root)) - {SUMS}, sums, where=str(root))  # refuses links anywhere
    for path, want in sums.items():
        got = safeio.sha256(root, path)
        if got != want:
            raise IntegrityError(f"{path}: sha256 mismatch ({SUMS} {want[:12]}, file {got[:12]})", where=str(root))
    data = safeio.read_bytes(root, RELEASE_JSON, max_bytes=safeio.JSON_LIMITS.max_file_bytes)
    return parse_release(data, sums, where=str(root / RELEASE_JSON))


def release_cards(bundle: Path) -> list[tuple[ReleaseBundle, BundleSAE, list[FeatureCard]]]:
    """(release.json, its SAE entry, cards) for every SAE of a built bundle, verified first."""
    release = verify(bundle)
    out = []
    for entry in release.saes:
        files = [safeio.regular_file(bundle, f) for f in entry.card_files]
        cards = card_files.read_cards(files) if files else []
        out.append((release, entry, cards))
    return out


def export_neuronpedia_release(
    bundle: str | os.PathLike, out: str | os.PathLike, *, model_id: str | None = None, source_id: str | None = None,
    creator: str = "saekit",
) -> list[dict[str, Any]]:
    """Every carded SAE of a built bundle (verified first) in Neuronpedia's upload layout under
    ``out`` (releases.ecosystem.export_neuronpedia); ids from the manifest or Neuronpedia's
    naming (ecosystem.neuronpedia_ids), ``model_id`` and, for a one-SAE release, ``source_id``
    override them. Returns ``{sae_id, folder, cards}`` per SAE written."""
    from saekit.releases import ecosystem as eco

    root = Path(bundle)
    written = []
    for release, entry, cards in release_cards(root):
        if not cards:
            continue
        rel = f"{entry.sae_id}/cfg.json"
        cfg = safeio.load_json(safeio.read_bytes(root, rel, max_bytes=safeio.JSON_LIMITS.max_file_bytes),
                               where=str(root / rel))
        model, source = eco.neuronpedia_ids(release, entry, cfg)
        folder = eco.export_neuronpedia(
            cards, Path(out), model_id=model_id or model,
            source_id=source if len(release.saes) > 1 or not source_id else source_id, creator=creator,
            release={"name": release.release_id, "description": release.manifest.description,
                     "url": f"https://huggingface.co/{release.hub_repo}"},
            hf_repo=release.hub_repo, hf_folder=entry.sae_id, saelens_release=release.release_id)
        written.append({"sae_id": entry.sae_id, "folder": str(folder), "cards": len(cards)})
    if not written:
        raise InputError("the release carries no feature cards", where=str(root))
    return written
