"""Build a release bundle (Hugging Face repo layout) from a manifest and the registry.

    README.md                       model card (YAML front matter, SAE table, plots, how to load)
    <sae_id>/cfg.json               canonical artifact (SAELens v6 layout)
    <sae_id>/sae_weights.safetensors
    <sae_id>/eval.json              the BenchmarkRecord logged by the check
    <sae_id>/feature_cards.jsonl    FeatureCards (or feature_cards/part-NNNNN-of-MMMMM.jsonl.gz shards)
    plots/*.png                     feature density, L0 vs explained variance
    browser/index.html              static feature browser (data inlined)
    release.json                    manifest, pinned versions, benchmark records, file hashes
    SHA256SUMS                      sha256 of every other file (``sha256sum -c`` format)

Every reference is pinned to a registry version and its sha256 first; nothing goes in
without a passing gate. The same manifest and registry state give a byte-identical bundle:
no clock, no random ids, sorted keys, deterministic plots.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from saekit.harness.env import say
from saekit.registry.artifact import sha256_file
from saekit.releases.manifest import load_manifest
from saekit.releases.modelcard import SAEEntry, metrics_of
from saekit.schemas import (
    BenchmarkRecord,
    GateFailedError,
    InputError,
    IntegrityError,
    NotFoundError,
    ReleaseManifest,
)

BUNDLE_FORMAT = "saekit-release/1"
SUMS = "SHA256SUMS"
RELEASE_JSON = "release.json"
# The Hub allows 10k entries per folder and recommends files under a few GB; feature cards
# of wide SAEs are split into gzip shards of at most this many cards (one JSON line each)
# and this many uncompressed bytes, so a 16k-latent SAE is 8 files of a few MB.
CARDS_PER_SHARD = 2048
SHARD_BYTES = 256 * 2**20
ARTIFACT_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def read_records(path: Path) -> list[BenchmarkRecord]:
    """BenchmarkRecord(s) of an eval.json (one object or a list)."""
    from pydantic import ValidationError

    try:
        raw = json.loads(Path(path).read_text())
        items = raw if isinstance(raw, list) else [raw]
        return [BenchmarkRecord.model_validate(r, strict=False) for r in items]
    except (json.JSONDecodeError, ValidationError) as err:
        raise InputError(f"not a BenchmarkRecord ({str(err).splitlines()[0]})", where=str(path)) from None


def read_cards(path: Path) -> list[dict[str, Any]]:
    """Feature cards of a JSONL file as parsed JSON objects (validation is saekit cards')."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"line {n}: not JSON ({err.msg})", where=str(path)) from None
    return out


# --- gate ------------------------------------------------------------------------------


def _failing(verdict: Any) -> str:
    return "; ".join(
        f"{r.rule.metric} {'unmeasured' if r.measured is None else f'{r.measured:.4g}'} fails {r.rule}"
        for r in verdict.failing
    )


def _apply_gate(policy: Any, record: BenchmarkRecord) -> Any:
    """The harness' gate (saekit.harness.gate.apply) applied to a record."""
    try:
        from saekit.harness.gate import apply
    except ImportError:  # harness without a gate module: the same rule, applied here
        from saekit.schemas import GateVerdict, RuleResult

        results = [
            RuleResult(rule=r, measured=record.metric(r.metric),
                       passed=record.metric(r.metric) is not None and r.holds(record.metric(r.metric)))
            for r in policy.rules
        ]
        return GateVerdict(passed=all(x.passed for x in results), results=results)
    return apply(policy, record)


def _gate(manifest: ReleaseManifest, ref: str, info: Any, *, run_checks: bool, where: str) -> Any:
    """The version's gate must pass: recorded, or checked now when none is recorded."""
    from saekit.registry import store

    gate = info.tags.get("saekit.gate")
    if gate is None and run_checks:
        from saekit.harness.check import check

        say(f"release: no check recorded for {info.name}/{info.version}; running saekit check")
        check(f"{info.name}/{info.version}", policy=manifest.gate)
        info = store.resolve(f"{info.name}/{info.version}")
        gate = info.tags.get("saekit.gate")
    if gate != "pass":
        why = info.tags.get("saekit.gate_failed") or ("no check recorded" if gate is None else gate)
        raise GateFailedError(f"gate failed for '{ref}' ({info.name}/{info.version}): {why}", where=where)
    return info


# --- build -----------------------------------------------------------------------------


def build(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    run_checks: bool = True,
    cards_per_shard: int = CARDS_PER_SHARD,
) -> Path:
    """Build the bundle of ``manifest_path`` into ``out_dir`` (replaced); returns ``out_dir``.

    ``run_checks``: run ``saekit check`` on a version that has no recorded gate (else refuse).
    """
    manifest = load_manifest(manifest_path)
    return build_from_manifest(manifest, out_dir, run_checks=run_checks, cards_per_shard=cards_per_shard,
                               where=str(manifest_path))


def build_from_manifest(
    manifest: ReleaseManifest,
    out_dir: str | os.PathLike,
    *,
    run_checks: bool = True,
    cards_per_shard: int = CARDS_PER_SHARD,
    where: str = "manifest",
) -> Path:
    """:func:`build` for a manifest already in memory."""
    from saekit.registry import store

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMS).is_file())):
        raise InputError("exists and is not a saekit bundle; refusing to overwrite", where=str(out))
    ids = [s.sae_id for s in manifest.saes]
    if len(set(ids)) != len(ids):
        raise InputError("sae_id values must be unique", where=where)
    reserved = {"browser", "plots", RELEASE_JSON, SUMS, "README.md"}
    for sid in ids:
        if sid.split("/")[0] in reserved:
            raise InputError(f"sae_id {sid!r} collides with a bundle file or folder", where=where)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        entries, cards_by_id, records = _write_saes(manifest, tmp, store, run_checks, cards_per_shard, where)
        plots = _write_plots(tmp, entries, cards_by_id)
        _write_browser(tmp, manifest, entries, cards_by_id)
        from saekit.releases.modelcard import render

        (tmp / "README.md").write_text(render(manifest, entries, plots=plots), encoding="utf-8")
        _write_release_json(tmp, manifest, entries, records)
        write_sums(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"release: built {manifest.release_id} v{manifest.version} ({len(entries)} SAEs) at {out}")
    return out


def _write_saes(manifest, tmp: Path, store, run_checks: bool, cards_per_shard: int, where: str):
    entries: list[SAEEntry] = []
    cards_by_id: dict[str, list[dict[str, Any]]] = {}
    records: dict[str, Any] = {}
    for rs in manifest.saes:
        info = store.resolve(rs.ref)
        info = _gate(manifest, rs.ref, info, run_checks=run_checks, where=where)
        pinned = f"{info.name}/{info.version}"
        checks = store.check_files(info.name, info.version)
        record = None
        dest = tmp / rs.sae_id
        dest.mkdir(parents=True)
        if "eval.json" in checks:
            recs = read_records(checks["eval.json"])
            record = recs[-1]
            shutil.copyfile(checks["eval.json"], dest / "eval.json")
            records[rs.sae_id] = json.loads(Path(checks["eval.json"]).read_text())
        if manifest.gate.rules:
            if record is None:
                raise GateFailedError(f"gate failed for '{rs.ref}' ({pinned}): no benchmark record to apply the release gate to", where=where)
            verdict = _apply_gate(manifest.gate, record)
            if not verdict.passed:
                raise GateFailedError(f"gate failed for '{rs.ref}' ({pinned}): {_failing(verdict)}", where=where)
        src = Path(store.fetch(pinned))
        for name in ARTIFACT_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
        from saekit.registry.artifact import artifact_sha256

        got = artifact_sha256(dest)
        if got != info.sha256:
            raise IntegrityError(f"artifact sha256 {got[:12]} != registered {info.sha256[:12]}", where=pinned)
        cfg = json.loads((dest / "cfg.json").read_text())
        cards: list[dict[str, Any]] = []
        card_files: list[str] = []
        if "feature_cards.jsonl" in checks:
            cards = read_cards(checks["feature_cards.jsonl"])
            card_files = _write_cards(checks["feature_cards.jsonl"], dest, rs.sae_id, len(cards), cards_per_shard)
        cards_by_id[rs.sae_id] = cards
        entries.append(SAEEntry(rs.sae_id, rs.ref, info.name, int(info.version), info.sha256, cfg, record,
                                "pass", len(cards), card_files))
        say(f"release: {rs.sae_id} <- {pinned} sha256 {info.sha256[:12]} ({len(cards)} cards)")
    return entries, cards_by_id, records


def _write_cards(src: Path, dest: Path, sae_id: str, n: int, per_shard: int) -> list[str]:
    """Copy the cards as they are, or split them into gzip shards of at most ``per_shard``
    lines and SHARD_BYTES uncompressed bytes (gzip without a timestamp: same bytes each build)."""
    import gzip

    if n <= per_shard and src.stat().st_size <= SHARD_BYTES:
        shutil.copyfile(src, dest / "feature_cards.jsonl")
        return [f"{sae_id}/feature_cards.jsonl"]
    groups: list[list[bytes]] = [[]]
    size = 0
    with open(src, "rb") as f:
        for ln in f:
            if not ln.strip():
                continue
            ln = ln if ln.endswith(b"\n") else ln + b"\n"
            if groups[-1] and (len(groups[-1]) == per_shard or size + len(ln) > SHARD_BYTES):
                groups.append([])
                size = 0
            groups[-1].append(ln)
            size += len(ln)
    (dest / "feature_cards").mkdir()
    names = [f"feature_cards/part-{i:05d}-of-{len(groups):05d}.jsonl.gz" for i in range(len(groups))]
    for name, lines in zip(names, groups):
        (dest / name).write_bytes(gzip.compress(b"".join(lines), compresslevel=6, mtime=0))
    return [f"{sae_id}/{name}" for name in names]


def _write_plots(tmp: Path, entries: list[SAEEntry], cards_by_id) -> list[tuple[str, str]]:
    from saekit.releases import plots

    (tmp / "plots").mkdir()
    out: list[tuple[str, str]] = []
    densities = {
        e.sae_id: [float((c.get("stats") or {}).get("density", 0.0)) for c in cards_by_id[e.sae_id] if c.get("stats")]
        for e in entries
    }
    for e in entries:
        # Every latent's density when the artifact carries SAELens' sparsity.safetensors
        # (log10 feature density per latent), rather than the documented latents only.
        sparsity = tmp / e.sae_id / "sparsity.safetensors"
        if sparsity.is_file():
            from safetensors.numpy import load_file

            logs = load_file(str(sparsity)).get("sparsity")
            if logs is not None:
                densities[e.sae_id] = [float(10.0 ** v) if v > -30 else 0.0 for v in logs.reshape(-1).tolist()]
    densities = {k: v for k, v in densities.items() if v}
    if densities:
        n_tokens = {
            e.sae_id: (e.record.data.n_tokens if e.record is not None and e.record.data is not None else None)
            for e in entries
        }
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
    import saekit

    files = {p: sha256_file(tmp / p) for p in _listing(tmp)}
    stamps = [r.datetime_epoch_millis for r in (e.record for e in entries) if r is not None]
    data = {
        "format": BUNDLE_FORMAT,
        "release_id": manifest.release_id,
        "version": manifest.version,
        "tag": f"v{manifest.version}",
        "hub_repo": manifest.hub_repo,
        # From the records, never the clock: rebuilding gives the same bytes.
        "built_from_epoch_millis": max(stamps) if stamps else None,
        "saekit_version": saekit.__version__,
        "manifest": manifest.model_dump(mode="json"),
        "saes": [
            {
                "sae_id": e.sae_id,
                "ref": e.ref,
                "registry": {"name": e.name, "version": e.version},
                "sha256": e.sha256,
                "gate": e.gate,
                "eval_id": e.record.eval_id if e.record is not None else None,
                "metrics": metrics_of(e.record),
                "d_in": e.cfg.get("d_in"),
                "d_sae": e.cfg.get("d_sae"),
                "architecture": e.cfg.get("architecture"),
                "n_cards": e.n_cards,
                "card_files": e.card_files,
            }
            for e in entries
        ],
        "records": records,
        "files": files,
    }
    (tmp / RELEASE_JSON).write_bytes(_dumps(data))


# --- hashes ----------------------------------------------------------------------------


def _listing(root: Path) -> list[str]:
    """Every file under root (posix paths, sorted), except SHA256SUMS and release.json."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in (SUMS, RELEASE_JSON)
    )


def write_sums(root: Path) -> None:
    """SHA256SUMS over every file of the bundle (release.json included), sha256sum format."""
    paths = _listing(root) + ([RELEASE_JSON] if (root / RELEASE_JSON).is_file() else [])
    lines = [f"{sha256_file(root / p)}  {p}\n" for p in sorted(paths)]
    (root / SUMS).write_text("".join(lines), encoding="utf-8")


def parse_sums(text: str, *, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, path = line.partition("  ")
        if not sep or len(digest) != 64 or not path or path.startswith("/") or ".." in path.split("/"):
            raise IntegrityError(f"line {n}: not '<sha256>  <path>'", where=where)
        out[path] = digest
    return out


def verify(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a bundle against its SHA256SUMS (every file listed, every hash matching, no
    extra files); returns its release.json."""
    root = Path(bundle_dir)
    if not (root / SUMS).is_file():
        raise NotFoundError(f"no {SUMS}: not a saekit bundle", where=str(root))
    sums = parse_sums((root / SUMS).read_text(), where=str(root / SUMS))
    present = set(_listing(root)) | ({RELEASE_JSON} if (root / RELEASE_JSON).is_file() else set())
    for path in sorted(present - set(sums)):
        raise IntegrityError(f"{path}: not listed in {SUMS}", where=str(root))
    for path, want in sums.items():
        if not (root / path).is_file():
            raise IntegrityError(f"{path}: listed in {SUMS} but missing", where=str(root))
        got = sha256_file(root / path)
        if got != want:
            raise IntegrityError(f"{path}: sha256 mismatch ({SUMS} {want[:12]}, file {got[:12]})", where=str(root))
    if RELEASE_JSON not in sums:
        raise IntegrityError(f"{RELEASE_JSON} missing", where=str(root))
    return json.loads((root / RELEASE_JSON).read_text())
