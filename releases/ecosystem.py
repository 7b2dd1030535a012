"""Releases that join the registries the field already uses: SAELens and Neuronpedia.

- SAELens: a bundle carries ``pretrained_saes.yaml``, its SAEs as one release in the format
  of SAELens' own catalogue (sae_lens/pretrained_saes.yaml, read by
  ``sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory``): ``repo_id``,
  ``model``, ``conversion_func``, and per SAE ``id``, ``path``, ``l0``,
  ``variance_explained`` and ``neuronpedia``. Pasted into SAELens' yaml, the release loads
  by name (``SAE.from_pretrained(release, sae_id)``), unpinned: SAELens downloads from the
  repo's default branch, not the release tag.
- Neuronpedia: feature cards written in Neuronpedia's bulk-import layout, the one SAEDashboard's
  Neuronpedia export writes (sae_dashboard/neuronpedia, after neuronpedia-utils'
  ``convert-saedashboard-to-neuronpedia-export.py``)::

      OUT/<modelId>/<sourceId>/
          release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl
          features/batch-<n>.jsonl.gz        one Feature row per latent
          activations/batch-<n>.jsonl.gz     one Activation row per example
          explanations/batch-<n>.jsonl.gz    one Explanation row per annotation (Neuronpedia's
                                             own exports carry these beside the dashboards)

  Rows carry the columns of Neuronpedia's tables (apps/webapp/prisma/schema.prisma: Feature
  is its ``Neuron``); the per-feature mapping is schemas.convert's. The saekit SAE identity
  (name, version, sha256, d_sae) travels in ``source.jsonl``'s ``notes``, so cards read
  back name the same SAE. Rows are deterministic (ids from source, index and position; no
  clock).
- Neuronpedia explanations (an export's ``explanations/*.jsonl.gz``, or a JSON/JSONL list
  of Explanation rows) become card annotations after checking they describe the cards' SAE
  (Neuronpedia model and source id, the sha256 when the export names one) and that every
  index exists in an SAE of that width.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from saekit.releases.modelcard import metrics_of
from saekit.schemas import FeatureCard, InputError, NotFoundError, ReleaseManifest
from saekit.schemas.card_files import read_cards, read_rows, write_rows
from saekit.schemas.release import BundleSAE, ReleaseBundle
from saekit.schemas.safeio import DEFAULT_LIMITS, Limits

SAELENS_REGISTRY = "pretrained_saes.yaml"
FEATURES_PER_BATCH = 1024
# Bounds on what is read back (a gzip bomb or a runaway file stops with one line).
MAX_JSONL_BYTES = 1 << 30
ROW_LIMITS = Limits(max_file_bytes=MAX_JSONL_BYTES, max_line_bytes=DEFAULT_LIMITS.max_line_bytes,
                    max_depth=DEFAULT_LIMITS.max_depth)
_SOURCE_ID = re.compile(r"^[A-Za-z0-9][\w.-]*$")


# --- SAELens ---------------------------------------------------------------------------


def saelens_registry(manifest: ReleaseManifest, entries: list[Any]) -> dict[str, Any]:
    """The release as one entry of SAELens' pretrained_saes.yaml (``{release_id: {...}}``)."""

    by_id = {s.sae_id: s for s in manifest.saes}
    saes = []
    for e in entries:
        m = metrics_of(e.record)
        item: dict[str, Any] = {"id": e.sae_id, "path": e.sae_id}
        if m.get("l0") is not None:
            item["l0"] = round(float(m["l0"]), 4)
        if m.get("explained_variance") is not None:
            item["variance_explained"] = round(float(m["explained_variance"]), 6)
        np_id = getattr(by_id.get(e.sae_id), "neuronpedia", None)
        if np_id:
            item["neuronpedia"] = np_id
        saes.append(item)
    # conversion_func null: the folders are SAELens' own layout (SAE.load_from_disk).
    return {manifest.release_id: {"repo_id": manifest.hub_repo, "model": manifest.base_model.id,
                                  "conversion_func": None, "saes": saes}}


def write_saelens_registry(root: Path, manifest: ReleaseManifest, entries: list[Any]) -> Path:
    import yaml

    path = Path(root) / SAELENS_REGISTRY
    head = ("# SAELens registry entry for this release (sae_lens/pretrained_saes.yaml format).\n"
            "# Add it to SAELens' pretrained_saes.yaml to load these SAEs by release name;\n"
            "# SAELens downloads from the repo's default branch (unpinned).\n")
    path.write_text(head + yaml.safe_dump(saelens_registry(manifest, entries), sort_keys=False), encoding="utf-8")
    return path


# --- reading JSON lines, bounded -------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Objects of a .jsonl, .jsonl.gz or .json (list or object) file, within ROW_LIMITS
    (saekit.schemas.card_files.read_rows); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such file", where=str(path))
    return read_rows(path, ROW_LIMITS)


# --- Neuronpedia export ----------------------------------------------------------------


def _bin_fields(bin_: str | None) -> dict[str, Any]:
    """SAEDashboard's binMin/binMax for an example's sampling bin (top: -1)."""
    if bin_ == "top":
        return {"binMin": -1}
    m = re.fullmatch(r"quantile\[(?P<a>[^,]+), (?P<b>[^\]]+)\]", bin_ or "")
    if m:
        try:
            return {"binMin": float(m["a"]), "binMax": float(m["b"])}
        except ValueError:
            return {}
    return {}


def export_neuronpedia(
    cards: list[FeatureCard],
    out: Path,
    *,
    model_id: str,
    source_id: str,
    creator: str = "saekit",
    release: dict[str, Any] | None = None,
    hf_repo: str | None = None,
    hf_folder: str | None = None,
    saelens_release: str | None = None,
    dataset: str | None = None,
    features_per_batch: int = FEATURES_PER_BATCH,
) -> Path:
    """Write ``cards`` (one SAE) in Neuronpedia's upload layout; returns the source folder."""
    from saekit.schemas.convert import to_neuronpedia

    for what, value in (("model id", model_id), ("source id", source_id)):
        if not _SOURCE_ID.match(value or ""):
            raise InputError(f"Neuronpedia {what} must be letters, digits, '.', '_', '-'", where=repr(value))
    if not cards:
        raise InputError("no cards to export", where=str(out))
    names = {(c.sae.name, c.sae.version, c.sae.sha256) for c in cards}
    if len(names) > 1:
        raise InputError("cards of more than one SAE; export one SAE per source", where=str(out))
    sae = cards[0].sae
    set_name = source_id.split("-", 1)[1] if re.match(r"^\d+-.", source_id) else source_id
    folder = Path(out) / model_id / source_id
    folder.mkdir(parents=True, exist_ok=True)
    rel = release or {}
    write_rows(folder / "release.jsonl", [{
        "name": rel.get("name") or set_name, "description": rel.get("description") or set_name,
        "descriptionShort": rel.get("description") or set_name, "creatorName": creator, "creatorNameShort": creator,
        "creatorId": creator, "urls": [u for u in [rel.get("url")] if u], "visibility": "PUBLIC"}])
    write_rows(folder / "model.jsonl", [{
        "id": model_id, "instruct": model_id.endswith(("-it", "-instruct")), "displayNameShort": model_id,
        "displayName": model_id, "creatorId": creator, "visibility": "PUBLIC"}])
    write_rows(folder / "sourceset.jsonl", [{
        "modelId": model_id, "name": set_name, "creatorId": creator, "creatorName": creator, "hasDashboards": True,
        "visibility": "PUBLIC", "description": rel.get("description") or set_name,
        "releaseName": rel.get("name") or set_name}])
    write_rows(folder / "source.jsonl", [{
        "id": source_id, "modelId": model_id, "setName": set_name, "creatorId": creator, "hasDashboards": True,
        "visibility": "PUBLIC", "hfRepoId": hf_repo, "hfFolderId": hf_folder,
        "saelensRelease": saelens_release, "saelensSaeId": hf_folder if saelens_release else None,
        "dataset": dataset, "notes": json.dumps({"saekit_sae": sae.model_dump(exclude_none=True)}, sort_keys=True)}])
    ordered = sorted(cards, key=lambda c: c.index)
    for start in range(0, len(ordered), features_per_batch):
        batch = ordered[start : start + features_per_batch]
        name = f"batch-{start // features_per_batch}.jsonl.gz"
        features, activations, explanations = [], [], []
        for card in batch:
            doc = to_neuronpedia(card, model_id=model_id, layer=source_id)
            doc["modelId"], doc["layer"], doc["index"] = model_id, source_id, str(card.index)
            acts = doc.pop("activations", None) or []
            expls = doc.pop("explanations", None) or []
            key = {"modelId": model_id, "layer": source_id, "index": str(card.index)}
            features.append({**doc, "creatorId": creator})
            for i, (a, ex) in enumerate(zip(acts, card.top_examples)):
                row = {"id": f"{source_id}-{card.index}-{i}", **key, **a, "creatorId": creator}
                row["minValue"] = min(a["values"]) if a.get("values") else 0.0
                for k, v in _bin_fields(ex.bin).items():
                    row.setdefault(k, v)
                activations.append(row)
            for i, e in enumerate(expls):
                explanations.append({"id": f"{source_id}-{card.index}-e{i}", **key, **e})
        write_rows(folder / "features" / name, features)
        write_rows(folder / "activations" / name, activations)
        if explanations:
            write_rows(folder / "explanations" / name, explanations)
    return folder


def export_card_file(
    path: str | os.PathLike, out: str | os.PathLike, *, model_id: str | None = None, source_id: str | None = None,
    creator: str = "saekit",
) -> dict[str, Any]:
    """The cards of one SAE (a cards file or folder, saekit.schemas.card_files) in Neuronpedia's
    upload layout under ``out``; the ids default to those of cards imported from Neuronpedia.
    Returns ``{folder, cards}``."""
    cards = read_cards(path)
    if not cards:
        raise InputError("no cards", where=str(path))
    np_keep = cards[0].extra.get("neuronpedia") or {}
    model = model_id or np_keep.get("modelId")
    source = source_id or np_keep.get("layer")
    if not model or not source:
        raise InputError("pass --model-id and --source-id (the cards do not name a Neuronpedia source)", where=str(path))
    folder = export_neuronpedia(cards, Path(out), model_id=model, source_id=source, creator=creator)
    return {"folder": str(folder), "cards": len(cards)}


def _batches(folder: Path, kind: str) -> list[Path]:
    def num(p: Path) -> tuple[int, str]:
        m = re.search(r"(\d+)", p.name)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted((p for p in (folder / kind).glob("*.jsonl.gz") if p.is_file() and not p.is_symlink()), key=num)


def _source_row(folder: Path) -> dict[str, Any]:
    rows = read_jsonl(folder / "source.jsonl")
    if len(rows) != 1:
        raise InputError("source.jsonl holds one row per source", where=str(folder / "source.jsonl"))
    return rows[0]


def source_identity(folder: Path) -> dict[str, Any] | None:
    """The saekit SAE identity an export's source.jsonl notes carry, if any."""
    notes = _source_row(folder).get("notes")
    try:
        data = json.loads(notes) if isinstance(notes, str) else None
    except json.JSONDecodeError:
        return None
    return data.get("saekit_sae") if isinstance(data, dict) else None


_ROW_KEYS = ("id", "modelId", "layer", "index", "creatorId", "minValue")


def read_neuronpedia(folder: Path) -> list[FeatureCard]:
    """Cards of one source folder of Neuronpedia's upload layout (inverse of export_neuronpedia)."""
    from saekit.schemas.card import SAERef
    from saekit.schemas.convert import from_neuronpedia

    folder = Path(folder)
    if not (folder / "source.jsonl").is_file():
        raise NotFoundError("no source.jsonl: not a Neuronpedia export source folder", where=str(folder))
    ident = source_identity(folder)
    sae = SAERef(**ident) if ident else None
    acts: dict[str, list[dict[str, Any]]] = {}
    for path in _batches(folder, "activations"):
        for row in read_jsonl(path):
            acts.setdefault(str(row.get("index")), []).append(row)
    expls: dict[str, list[dict[str, Any]]] = {}
    for path in _batches(folder, "explanations"):
        for row in read_jsonl(path):
            expls.setdefault(str(row.get("index")), []).append(row)
    cards = []
    for path in _batches(folder, "features"):
        for row in read_jsonl(path):
            idx = str(row.get("index"))
            doc = {k: v for k, v in row.items() if k != "creatorId"}
            strip = lambda r, extra=(): {k: v for k, v in r.items() if k not in _ROW_KEYS + tuple(extra)}  # noqa: E731
            doc["activations"] = [strip(a, ("binMin", "binMax") if a.get("binMin") == -1 else ())
                                  for a in acts.get(idx, [])]
            doc["explanations"] = [strip(e) for e in expls.get(idx, [])]
            cards.append(from_neuronpedia(doc, sae=sae))
    return cards


def import_neuronpedia(src: str | os.PathLike) -> list[FeatureCard]:
    """The cards of a Neuronpedia export: its one source folder, or a root holding exactly one."""
    src = Path(src)
    sources = find_sources(src) if src.is_dir() else []
    if len(sources) != 1:
        raise InputError(f"expected one Neuronpedia source folder, found {len(sources)}", where=str(src))
    return read_neuronpedia(sources[0])


def find_sources(root: Path) -> list[Path]:
    """Source folders (holding source.jsonl) under an export root, or the root itself."""
    root = Path(root)
    if (root / "source.jsonl").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("source.jsonl") if p.is_file() and not p.is_symlink())


# --- Neuronpedia explanations -> card annotations --------------------------------------


def annotate_from_neuronpedia(
    cards: list[FeatureCard],
    explanations: Path,
    *,
    source: str | None = None,
    d_sae: int | None = None,
) -> tuple[list[FeatureCard], int]:
    """Cards with Neuronpedia explanations added as annotations; returns (cards, added).

    ``source`` (MODEL/SOURCE_ID) names the Neuronpedia SAE the cards describe; by default it
    comes from the cards (imported from Neuronpedia) or the export's source.jsonl whose
    saekit identity matches the cards' sha256. Refused, with one line: explanations of
    another SAE, an SAE of another width, and indices that do not exist.
    """
    from saekit.schemas.card import SAERef
    from saekit.schemas.convert import from_neuronpedia

    explanations = Path(explanations)
    where = str(explanations)
    if not cards:
        raise InputError("no cards to annotate")
    sae = cards[0].sae
    if any(c.sae != sae for c in cards):
        raise InputError("cards of more than one SAE; annotate one SAE's cards at a time")
    rows: list[dict[str, Any]] = []
    export_ident: dict[str, Any] | None = None
    export_source: tuple[str, str] | None = None
    if explanations.is_dir():
        sources = find_sources(explanations)
        if len(sources) != 1:
            raise InputError(f"{len(sources)} Neuronpedia sources here; name one source folder", where=where)
        export_ident = source_identity(sources[0])
        src = _source_row(sources[0])
        export_source = (str(src.get("modelId")), str(src.get("id")))
        for path in _batches(sources[0], "explanations"):
            rows += read_jsonl(path)
    else:
        rows = read_jsonl(explanations)
    if export_ident and sae.sha256 and export_ident.get("sha256") and export_ident["sha256"] != sae.sha256:
        raise InputError(f"explanations are for SAE sha256 {export_ident['sha256'][:12]}, the cards' SAE is "
                         f"{sae.sha256[:12]}", where=where)
    width = d_sae or sae.d_sae or (export_ident or {}).get("d_sae")
    if width is None:
        raise InputError("the SAE's width is unknown (cards carry no d_sae): pass --d-sae", where=where)
    if (export_ident or {}).get("d_sae") not in (None, width):
        raise InputError(f"explanations are for a {export_ident['d_sae']}-latent SAE, the cards' has {width}",
                         where=where)
    if source is not None:
        model, _, layer = source.partition("/")
        expected = (model, layer)
    elif export_source is not None and export_ident and export_ident.get("sha256") == sae.sha256:
        expected = export_source
    else:
        np_ids = {((c.extra.get("neuronpedia") or {}).get("modelId"), (c.extra.get("neuronpedia") or {}).get("layer"))
                  for c in cards}
        if len(np_ids) == 1 and None not in next(iter(np_ids)):
            expected = next(iter(np_ids))
        else:
            raise InputError("cannot tell which Neuronpedia SAE the cards are: pass --source MODEL/SOURCE_ID",
                             where=where)
    by_index = {c.index: c.model_copy(deep=True) for c in cards}  # the caller's cards stay as they were
    added = 0
    for n, row in enumerate(rows, 1):
        got = (str(row.get("modelId")), str(row.get("layer")))
        if got != (str(expected[0]), str(expected[1])):
            raise InputError(f"row {n} describes {got[0]}/{got[1]}, not the cards' SAE {expected[0]}/{expected[1]}",
                             where=where)
        try:
            index = int(row["index"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"row {n} has no integer index", where=where) from None
        if not 0 <= index < width:
            raise InputError(f"row {n}: latent {index} does not exist in a {width}-latent SAE", where=where)
        doc = {"index": index, "explanations": [{k: v for k, v in row.items() if k not in _ROW_KEYS}]}
        ann = from_neuronpedia(doc, sae=SAERef(name=sae.name)).annotations[0]
        card = by_index.get(index)
        if card is None:
            card = by_index[index] = FeatureCard(sae=sae, index=index)
        if ann not in card.annotations:
            card.annotations.append(ann)
            added += 1
    return sorted(by_index.values(), key=lambda c: c.index), added


def neuronpedia_ids(release: ReleaseBundle, entry: BundleSAE, cfg: dict[str, Any]) -> tuple[str, str]:
    """(model id, source id) for a release's SAE: the manifest's neuronpedia id, else
    ``<model name, lowercased>`` and ``<layer>-<release id>`` (Neuronpedia's own naming)."""
    given = next((s.neuronpedia for s in release.manifest.saes if s.sae_id == entry.sae_id), None)
    if given:
        model, _, source = given.partition("/")
        return model, source
    model = release.manifest.base_model.id.split("/")[-1].lower()
    hook = (cfg.get("metadata") or {}).get("hook_name") or ""
    m = re.search(r"(?:layers|blocks|h)\.(\d+)", hook)
    set_name = re.sub(r"[^\w.-]+", "-", release.release_id).strip("-")
    suffix = re.sub(r"[^\w.-]+", "-", entry.sae_id).strip("-")
    layer = m.group(1) if m else "0"
    source = f"{layer}-{set_name}" + (f"__{suffix}" if len(release.saes) > 1 else "")
    return model, source
