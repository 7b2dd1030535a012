"""A transcoder set as a Hub release: the set, its check records and cards, in the layouts
saekit, circuit-tracer and SAELens read.

    README.md                        model card: per-layer and whole-set metrics of the check
    release.json                     kind "transcoder_set": release id, version, tag, hub repo,
                                     the set (registry pin, sha256, model, layers, hooks, metrics)
    SHA256SUMS                       every file's sha256 (release.json included)
    pretrained_saes.yaml             SAELens catalogue entry, one sae per layer (only when every
                                     layer is an architecture SAELens has: transcoder,
                                     skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder)
    <set_id>/set.json                the canonical set (saekit.registry.transcoder_set) ...
    <set_id>/layer_{i}/cfg.json      ... one SAELens-layout folder per layer
    <set_id>/layer_{i}/sae_weights.safetensors
    <set_id>/layer_{i}/eval.json     the layer's check record
    <set_id>/layer_{i}/feature_cards.jsonl
    <set_id>/eval.json               the set's check record
    graphs/<slug>/graph.json, graph.safetensors, graph-meta.json, index.html
                                     attribution graphs of this set (``saekit graph``), with --graph
    <set_id>/circuit-tracer/config.yaml, layer_{i}.safetensors
                                     circuit-tracer's layout (saekit.registry.transcoder_formats
                                     .circuit_tracer_files), when the set has layers 0..n-1 of one
                                     width with one pair of hooks; config.yaml lists no paths, so
                                     circuit-tracer's ``load_transcoder_from_hub(
                                     "ORG/REPO/<set_id>/circuit-tracer@<tag>")`` finds the layer
                                     files beside it (circuit_tracer/utils/hf_utils.py
                                     resolve_transcoder_paths)

circuit-tracer 0.5.0's stock loader reads ReLU and JumpReLU layers; a TopK layer is written
with its k (``activation_function.k``), which that loader refuses rather than run as ReLU.

``saekit.load("hf://ORG/REPO@<tag>/<set_id>")`` loads the set back, verified against
SHA256SUMS and the set's sha256 (saekit.releases.download). A set publishes only as a registry
version whose check record (``saekit check``) is the bundle's, and whose sha256 is the
bundle's files'.
"""

from __future__ import annotations

import contextlib
import json
import re
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from saekit.schemas import GateFailedError, InputError, IntegrityError, NotFoundError, PublishError, safeio
from saekit.schemas.console import say

KIND = "transcoder_set"
CT_FOLDER = "circuit-tracer"
GRAPH_FILES = ("graph.json", "graph.safetensors", "graph-meta.json", "index.html")  # saekit.circuits.files


def _out(out_dir: str | os.PathLike) -> Path:
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.resolve() != out:
        raise InputError("is a symlink or lies under one; give the real folder", where=str(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("exists and is not an empty folder; a release is built into a new folder", where=str(out))
    return out


# names a release's top level holds besides the set's folder
_RESERVED = {"graphs", "readme.md", "release.json", "sha256sums", ".gitattributes"}


def _link_text(prompt: str) -> str:
    """A prompt as Markdown link text: JSON-quoted (newlines escaped), brackets escaped."""
    return json.dumps(prompt, ensure_ascii=False).replace("[", "\\[").replace("]", "\\]")


def build_set_release(
    ref: str,
    out_dir: str | os.PathLike,
    *,
    check_dir: str | os.PathLike,
    hub_repo: str,
    version: str = "1.0.0",
    release_id: str | None = None,
    set_id: str | None = None,
    license: str = "apache-2.0",
    graphs: list[str | os.PathLike] | tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Build the release folder of the registered set ``ref`` (NAME/VERSION, NAME@ALIAS) from
    its check output ``check_dir`` (``saekit check REF --out DIR``: eval.json,
    layer_{i}/eval.json and feature_cards.jsonl), which must describe this very set (sha256)."""
    from saekit.kernels import architectures as archs
    from saekit.registry import store
    from saekit.registry.transcoder_formats import circuit_tracer_files
    from saekit.registry.transcoder_set import stage_set
    from saekit.releases.bundle import RELEASE_JSON, write_sums
    from saekit.schemas.benchmark import read_records

    out = _out(out_dir)
    info = store.resolve(ref)
    tset = store.load_ref(f"{info.name}/{info.version}")
    if not hasattr(tset, "layers"):
        raise InputError("is an SAE, not a transcoder set (saekit release build takes SAEs)", where=ref)
    set_id = set_id or info.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", set_id) or set_id.lower() in _RESERVED:
        raise InputError(f"set id {set_id!r} must be one folder name (letters, digits, . _ -) and not one of "
                         f"the release's own names ({', '.join(sorted(_RESERVED))})", where="--set-id")
    release_id = release_id or info.name
    check_dir = Path(check_dir)
    set_rec = read_records(check_dir / "eval.json")[0]
    if set_rec.sae.sha256 != info.sha256:
        raise GateFailedError(f"the check record in {check_dir} is of sha256 {(set_rec.sae.sha256 or '?')[:12]}, "
                              f"not {info.name}/{info.version} ({info.sha256[:12]}); check it first", where=ref)
    layer_recs = {}
    for i in tset.layers:
        rec = read_records(check_dir / f"layer_{i}" / "eval.json")[0]
        if rec.sae.sha256 != tset[i].ref.sha256:
            raise GateFailedError(f"layer {i}'s record is of another transcoder", where=str(check_dir))
        layer_recs[i] = rec
    graph_entries = _check_graphs(graphs, info.sha256, f"{info.name}/{info.version}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        root = tmp / set_id
        root.mkdir()
        stage_set(store.fetch(f"{info.name}/{info.version}"), root)
        safeio.copy_file(check_dir, "eval.json", root / "eval.json")
        for i in tset.layers:
            safeio.copy_file(check_dir, f"layer_{i}/eval.json", root / f"layer_{i}" / "eval.json")
            if safeio.exists(check_dir, f"layer_{i}/feature_cards.jsonl"):
                safeio.copy_file(check_dir, f"layer_{i}/feature_cards.jsonl", root / f"layer_{i}" / "feature_cards.jsonl")
        for folder, g in graph_entries:  # checked above; copy_file re-checks each file is regular
            for name in GRAPH_FILES:
                safeio.copy_file(folder, name, tmp / g["path"] / name)
        ct_note = None
        widths = sorted({tset[i].d_sae for i in tset.layers})
        try:
            if len(widths) > 1:  # circuit_tracer/transcoder/single_layer_transcoder.py TranscoderSet.__init__
                raise InputError(f"circuit-tracer needs one width for every layer (this set has {widths})",
                                 where=repr(tset))
            files = circuit_tracer_files(tset, scan=f"{hub_repo}/{set_id}/{CT_FOLDER}")
        except InputError as err:
            ct_note = f"no circuit-tracer layout: {err.message}"
        else:
            import yaml

            config = yaml.safe_load(files.pop("config.yaml"))
            config.pop("transcoders", None)  # the Hub loader then finds layer_{i}.safetensors beside it
            (root / CT_FOLDER).mkdir()
            (root / CT_FOLDER / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            for name, data in files.items():
                (root / CT_FOLDER / name).write_bytes(data)
        layer_metrics = {i: {k: v for c in r.eval_result_metrics.values() for k, v in c.items()}
                         for i, r in layer_recs.items()}
        set_metrics = {k: v for c in set_rec.eval_result_metrics.values() for k, v in c.items()}
        saelens_ok = all(archs.architecture(tset[i].cfg).saelens_name for i in tset.layers)
        if saelens_ok:
            _write_saelens_entry(tmp, release_id, hub_repo, tset, set_id, layer_metrics)
        tag = f"v{version}"
        archs_used = ", ".join(sorted({tset[i].architecture for i in tset.layers}))
        notes = [n for n in (ct_note, None if saelens_ok else f"no pretrained_saes.yaml: SAELens has no class for "
                             f"{archs_used}") if n]
        release = {
            "kind": KIND, "release_id": release_id, "version": version, "tag": tag, "hub_repo": hub_repo,
            "license": license,
            "sets": [{
                "sae_id": set_id, "sha256": info.sha256, "registry": {"name": info.name, "version": int(info.version)},
                "model": {"id": tset.model_name, "revision": tset.model_revision},
                "check": {"eval_id": set_rec.eval_id, "metrics": set_metrics,
                          "data_fingerprint": set_rec.data.fingerprint if set_rec.data else None},
                "layers": [{"layer": i, "path": f"{set_id}/layer_{i}", "architecture": tset[i].architecture,
                            "hook_in": tset[i].hook_in, "hook_out": tset[i].hook_out, "sha256": tset[i].ref.sha256,
                            "d_in": tset[i].d_in, "d_sae": tset[i].d_sae, "d_out": tset[i].d_out,
                            "k": tset[i].cfg.k, "metrics": layer_metrics[i]} for i in tset.layers],
                "circuit_tracer": None if ct_note else f"{set_id}/{CT_FOLDER}",
                "saelens": saelens_ok,
                "notes": notes,
            }],
            "graphs": [g for _, g in graph_entries],
        }
        (tmp / RELEASE_JSON).write_text(json.dumps(release, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(release, tset, set_metrics, layer_metrics), encoding="utf-8")
        write_sums(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"release: built {out} ({len(tset)} layers)")
    return out


def _check_graphs(folders: Any, sha256: str, pin: str) -> list[tuple[Path, dict[str, Any]]]:
    """Each graph folder: exactly the four files ``saekit graph`` writes, all regular (no link),
    its graph-meta.json naming this set's sha256; its release.json entry (slug from the folder
    name, made unique)."""
    import re

    from saekit.circuits import files as gf

    out: list[tuple[Path, dict[str, Any]]] = []
    for folder in folders:
        folder = Path(folder)
        where = str(folder)
        if os.path.islink(folder):
            raise InputError("is a symlink; give the real graph folder", where=where)
        present = safeio.list_files(folder)  # refuses links and special files at any depth
        missing, extra = sorted(set(GRAPH_FILES) - set(present)), sorted(set(present) - set(GRAPH_FILES))
        if missing or extra:
            raise InputError("not a graph folder of `saekit graph`: " + "; ".join(
                x for x in (missing and f"missing {', '.join(missing)}", extra and f"unexpected {', '.join(extra)}")
                if x), where=where)
        meta = safeio.load_json(safeio.read_bytes(folder, gf.META, max_bytes=gf.MAX_META_BYTES),
                                where=str(folder / gf.META))
        tc = meta.get("transcoders") if isinstance(meta, dict) else None
        got = tc.get("sha256") if isinstance(tc, dict) else None
        if got != sha256:
            raise InputError(f"is a graph of transcoder set sha256 {str(got or '?')[:12]}, not of {pin} "
                             f"({sha256[:12]}); draw it with `saekit graph --transcoders {pin}`", where=where)
        base = re.sub(r"[^a-z0-9]+", "-", folder.name.lower()).strip("-") or "graph"
        slug, n = base, 2
        while any(g["slug"] == slug for _, g in out):
            slug, n = f"{base}-{n}", n + 1
        out.append((folder, {"slug": slug, "path": f"graphs/{slug}", "prompt": meta.get("prompt"),
                             "transcoders_sha256": got, "scores": meta.get("scores"),
                             "files": [f"graphs/{slug}/{name}" for name in GRAPH_FILES]}))
    return out


def _write_saelens_entry(root: Path, release_id: str, hub_repo: str, tset: Any, set_id: str,
                         layer_metrics: dict[int, dict[str, float]]) -> None:
    """SAELens' catalogue entry (sae_lens/pretrained_saes.yaml: repo_id, model, conversion_func,
    saes with id, path, l0; see saekit.releases.ecosystem): one sae per layer folder.
    ``variance_explained`` is 1 - fvu of the MLP output."""
    import yaml

    from saekit.releases.ecosystem import SAELENS_REGISTRY

    saes = []
    for i in tset.layers:
        m = layer_metrics[i]
        item: dict[str, Any] = {"id": f"layer_{i}", "path": f"{set_id}/layer_{i}"}
        if m.get("l0") is not None:
            item["l0"] = round(float(m["l0"]), 4)
        if m.get("fvu") is not None and m["fvu"] >= 0:
            item["variance_explained"] = round(1.0 - float(m["fvu"]), 6)
        saes.append(item)
    entry = {release_id: {"repo_id": hub_repo, "model": tset.model_name, "conversion_func": None, "saes": saes}}
    head = ("# SAELens registry entry for this transcoder set (sae_lens/pretrained_saes.yaml format), one sae per\n"
            "# layer; SAELens downloads from the repo's default branch (unpinned).\n")
    (root / SAELENS_REGISTRY).write_text(head + yaml.safe_dump(entry, sort_keys=False), encoding="utf-8")


def _model_card(release: dict[str, Any], tset: Any, set_metrics: dict[str, float],
                layer_metrics: dict[int, dict[str, float]]) -> str:
    import yaml

    s = release["sets"][0]
    front = {"library_name": "saekit", "license": release["license"],
             "tags": ["transcoders", "sparse-autoencoders", "circuit-tracer", "saekit"],
             "base_model": tset.model_name}
    cols = ("fvu", "l0", "dead_fraction", "ce_loss_score", "kl_div_score")
    fmt = lambda m: " | ".join(f"{m[c]:.4g}" if isinstance(m.get(c), (int, float)) else "-" for c in cols)  # noqa: E731
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {release['release_id']} {release['tag']}: transcoder set for {tset.model_name}", "",
             f"{len(tset)} layers ({', '.join(sorted({tset[i].architecture for i in tset.layers}))}), "
             f"registry version {s['registry']['name']}/{s['registry']['version']}, sha256 `{s['sha256']}`.", "",
             "Load it with saekit:", "", "```python", "import saekit",
             f"tset = saekit.load(\"hf://{release['hub_repo']}@{release['tag']}/{s['sae_id']}\")",
             f"tc = tset[{tset.layers[0]}]  # one layer's transcoder", "```", ""]
    if s["circuit_tracer"]:
        lines += ["With circuit-tracer:", "", "```python", "from circuit_tracer.utils.hf_utils import load_transcoder_from_hub",
                  f"transcoders, config = load_transcoder_from_hub(\"{release['hub_repo']}/{s['circuit_tracer']}@{release['tag']}\")",
                  "```", ""]
    lines += [f"Note: {n}" for n in s["notes"]] + ([""] if s["notes"] else [])
    lines += ["## Check", "", "FVU of each MLP's output (sparsify's definition), L0, dead latents, and the LM's CE/KL "
              "scores with the MLP replaced by its transcoder (the set row: every layer at once).", "",
              "| layer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {i} | {fmt(layer_metrics[i])} |" for i in tset.layers]
    lines += [f"| set | {fmt(set_metrics)} |", ""]
    if release.get("graphs"):
        lines += ["## Graphs", "", "Attribution graphs of this set (`saekit graph`): `graph.json` opens in "
                  "Neuronpedia's graph viewer, `index.html` renders offline.", ""]
        lines += [f"- [{_link_text(g['prompt'])}]({g['path']}/index.html) "
                  f"([graph.json]({g['path']}/graph.json))" for g in release["graphs"]]
        lines.append("")
    return "\n".join(lines) + "\n"


# --- reading a release back ----------------------------------------------------------------


def parse_set_release(data: bytes, *, where: str) -> dict[str, Any]:
    """release.json of a set release: bounded JSON, kind transcoder_set, each set with its
    sae_id and sha256; IntegrityError (one line) otherwise."""
    try:
        release = safeio.load_json(data, where=where)
    except InputError as err:
        raise IntegrityError(err.message, where=err.where) from None
    if not isinstance(release, dict) or release.get("kind") != KIND:
        raise IntegrityError("not a saekit transcoder set release.json", where=where)
    sets = release.get("sets")
    if not isinstance(sets, list) or not all(isinstance(s, dict) and isinstance(s.get("sae_id"), str)
                                             and isinstance(s.get("sha256"), str) for s in sets):
        raise IntegrityError("release.json's sets need sae_id and sha256", where=where)
    return release


def load_released_set(folder: Path, release: dict[str, Any], sae_id: str, commit: str, *, where: str) -> Any:
    """The set ``sae_id`` of a downloaded release (``folder``: its verified files), checked
    against the sha256 release.json gives it."""
    from saekit.registry.transcoder_set import load_set
    from saekit.schemas import SAERef

    entry = next((s for s in release["sets"] if s["sae_id"] == sae_id), None)
    if entry is None:
        raise NotFoundError(f"release.json lists no transcoder set {sae_id!r}", where=where)
    tset = load_set(folder, expected_sha256=entry["sha256"])
    tset.ref = SAERef(name=sae_id, version=commit, sha256=entry["sha256"])
    return tset


# --- publish -----------------------------------------------------------------------------


def is_set_release(bundle_dir: str | os.PathLike) -> bool:
    """Whether a folder's release.json says it is a transcoder set release (a small read)."""
    from saekit.releases.bundle import RELEASE_JSON

    root = Path(bundle_dir)
    if not root.is_dir() or not safeio.exists(root, RELEASE_JSON):
        return False
    try:
        data = safeio.load_json(safeio.read_bytes(root, RELEASE_JSON, max_bytes=safeio.JSON_LIMITS.max_file_bytes),
                                where=str(root / RELEASE_JSON))
    except InputError:
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def publish_set_release(bundle_dir: str | os.PathLike, repo_id: str | None = None, *, endpoint: str | None = None,
                        private: bool = False, record: bool = True) -> Any:
    """Publish a set release folder: one commit, tag ``v<version>``, idempotent (saekit.releases
    .publish does the Hub side). Refused unless every file matches SHA256SUMS and the set is, in
    the registry now, the version release.json names with the bundle's sha256 and check record."""
    import re

    from saekit.registry import store
    from saekit.registry import tags as T
    from saekit.registry.artifact import combine
    from saekit.registry.transcoder_set import layer_files, read_info
    from saekit.releases import publish as pub
    from saekit.releases.bundle import RELEASE_JSON
    from saekit.schemas.masking import mask

    root = Path(bundle_dir)
    with contextlib.ExitStack() as stack:
        snap = pub._snapshot(root, stack)
        release = safeio.load_json(snap.release_bytes, where=str(root / RELEASE_JSON))
        if not isinstance(release, dict) or release.get("kind") != KIND or not release.get("sets"):
            raise IntegrityError("release.json is not a saekit transcoder set release", where=str(root))
        for s in release["sets"]:
            pin = f"{s['registry']['name']}/{s['registry']['version']}"
            try:
                info = store.resolve(pin)
            except NotFoundError:
                raise GateFailedError(f"{pin} is not in this registry; refusing to publish", where=str(root)) from None
            set_info = read_info(root / s["sae_id"])
            bundled = combine({n: snap.sums[f"{s['sae_id']}/{n}"] for n in layer_files(set_info)})
            if not (info.sha256 == s["sha256"] == bundled):
                raise GateFailedError(f"{pin}: the bundle's set files hash to {bundled[:12]}, the registry says "
                                      f"{info.sha256[:12]}; refusing to publish", where=str(root))
            if info.tags.get(T.EVAL_ID) != s["check"]["eval_id"]:
                raise GateFailedError(f"{pin}: the bundle's check record is not the one logged on the version "
                                      "(saekit check it, then rebuild)", where=str(root))
        repo_id = repo_id or release.get("hub_repo")
        if not isinstance(repo_id, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id):
            raise InputError("expected ORG/NAME", where=str(repo_id))
        from types import SimpleNamespace

        from saekit.registry.hub import hub_api, hub_errors, quiet_progress

        api = hub_api(endpoint)
        with hub_errors(repo_id, failure=PublishError), quiet_progress():  # _publish reads release.release_id only
            result = pub._publish(api, root, snap, SimpleNamespace(release_id=release["release_id"]), repo_id,
                                  release["tag"], private)
    result.url = mask(f"{api.endpoint}/{repo_id}/tree/{release['tag']}")
    if record:
        for s in release["sets"]:
            want = {T.HUB_COMMIT: result.commit or "", T.HUB_REPO: repo_id, T.HUB_TAG: release["tag"]}
            store.record_tags(s["registry"]["name"], int(s["registry"]["version"]), want)
            result.registry_updated.append(f"{s['registry']['name']}/{s['registry']['version']}")
    say(f"publish: {result.message}")
    return result
