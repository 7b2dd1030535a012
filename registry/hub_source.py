"""Checkpoints on the Hugging Face Hub, by reference: resolve, detect the layout, convert.

    hf://[TYPE/]ORG/REPO[@REV]/PATH     PATH: a folder or file; a glob (layer_*/width_16k/*)
                                         names every SAE it matches
    saelens:RELEASE/SAE_ID              SAELens' pretrained_saes.yaml (the installed sae-lens
                                         package's copy, read from disk: no network)

Everything goes through huggingface_hub (``HfApi(endpoint=...)``, ``hf_hub_download``) at
``HF_ENDPOINT``. The revision is resolved to its commit once, and every file is downloaded
at that commit, so a later push to the source repo never changes what was registered.

Layouts, detected from the file listing at the commit:

- ``saelens``: ``cfg.json`` + ``sae_weights.safetensors`` (``SAE.save_model``). A cfg.json
  without ``metadata.sae_lens_version`` >= 6 is the pre-6.0 layout still common on the Hub
  (top-level ``hook_point``/``hook_name``, ``model_name``, ``activation_fn_str``,
  ``activation_fn_kwargs.k``, boolean ``normalize_activations``); it is upgraded as
  sae-lens' ``handle_pre_6_0_config`` does (sae_lens/loading/pretrained_sae_loaders.py).
- ``sparsify``: ``cfg.json`` + ``sae.safetensors``, one folder per hookpoint
  (``SparseCoder.save_to_disk``); the folder name is the hookpoint (``layers.6`` is the
  base model's module, ``model.layers.6`` of the causal LM saekit hooks).
- ``gemmascope``: ``params.npz`` under ``layer_N/width_W/average_l0_L``: N gives the hook,
  W the width (checked against the weights), L the average L0 (recorded).
- ``openai``: an openai/sparse_autoencoder state dict, ``.pt`` (``torch.load`` with
  ``weights_only=True``) or ``.safetensors`` (tensors by the same names; ``activation``
  and ``k`` in the file's ``__metadata__``). Never unpickled.

Provenance recorded on a registered version (tags, written only here):
``saekit.source`` (the pinned ``hf://REPO@COMMIT/PATH``), ``saekit.source.repo``,
``.commit``, ``.path``, ``.layout``, ``.files`` (sha256 of every source file), and
``.saelens`` for a catalogue reference. The artifact's cfg.json carries the pinned URI in
``saekit.provenance.source``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from saekit.registry import artifact as art
from saekit.registry import formats
from saekit.registry.hub import (
    cache_dir,
    check_commit,
    check_listing,
    endpoint,
    hub_api,
    hub_errors,
    quiet_progress,
)
from saekit.registry import transcoder_set as tset
from saekit.registry import tags as T
from saekit.registry.refs import Ref, hf_uri, parse_ref
from saekit.schemas import (
    ArtifactFormatError,
    InputError,
    IntegrityError,
    NotFoundError,
    ReferenceSyntaxError,
    SaekitError,
)
from saekit.schemas.settings import current

if TYPE_CHECKING:
    from saekit.kernels import SAE
    from saekit.registry.store import VersionInfo

LAYOUTS = ("saelens", "sparsify", "gemmascope", "openai", "circuit-tracer")
SOURCE = T.SOURCE
SOURCE_TAGS = (T.SOURCE, T.SOURCE_REPO, T.SOURCE_COMMIT, T.SOURCE_PATH, T.SOURCE_LAYOUT, T.SOURCE_FILES,
               T.SOURCE_SAELENS)
_GLOB = re.compile(r"[*?\[]")
# SAELens catalogue entries whose files are a layout read here: its own folders (no
# conversion) and Gemma Scope's params.npz ("gemma_2", sae_lens/loading/pretrained_sae_loaders.py).
_CONVERSIONS_READ = (None, "gemma_2", "gemma_2_transcoder", "mwhanna_transcoder")
# SAELens releases of per-layer transcoders stored as a circuit-tracer set (config.yaml +
# layer_{i}.safetensors at the repo root): saekit registers the whole set, ``saelens:RELEASE/*``.
_SET_CONVERSIONS = ("mwhanna_transcoder",)
# SAELens v6 cfg.json keys outside ``metadata`` (sae_lens/saes/sae.py SAEConfig fields).
_V6_TOP_LEVEL = ("architecture", "d_in", "d_sae", "d_out", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                 "reshape_activations", "k", "rescale_acts_by_decoder_norm")
_OPENAI_SUFFIXES = (".pt", ".pth", ".bin")
# Gemma Scope folder names (google/gemma-scope-*): layer_N/width_W/average_l0_L.
_GEMMASCOPE_DIR = re.compile(r"(?:^|/)layer_(?P<layer>\d+)/width_(?P<width>\d+)(?P<unit>[km]?)/average_l0_(?P<l0>\d+)$")
_GEMMASCOPE_REPO = re.compile(r"gemma-scope-(?P<size>2b|9b|27b)-(?P<kind>pt|it)-(?P<site>res|mlp|att|transcoders)")


@dataclass(frozen=True)
class Unit:
    """One SAE in a repo: its layout, its path (folder or file) and the files it needs."""

    layout: str
    path: str
    files: tuple[str, ...]


@dataclass
class Resolved:
    """A source reference pinned to a commit, with the SAEs it names."""

    ref: Ref
    repo: str
    repo_type: str
    revision: str
    commit: str
    units: list[Unit]
    lfs_sha256: dict[str, str] = field(default_factory=dict)
    saelens: dict[str, Any] | None = None  # catalogue entry: release, sae_id, l0, ...

    def uri(self, unit: Unit) -> str:
        return hf_uri(self.repo, self.commit, unit.path, self.repo_type)


# --- SAELens' catalogue ------------------------------------------------------------------


def saelens_catalogue(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """SAELens' pretrained_saes.yaml as a mapping (the installed sae-lens package's copy,
    or ``path``: a file in the same format). Read from disk; no network."""
    import yaml

    if path is None:
        from importlib.resources import files

        try:
            text = files("sae_lens").joinpath("pretrained_saes.yaml").read_text()
        except (ModuleNotFoundError, FileNotFoundError):
            raise NotFoundError("sae-lens is not installed (its pretrained_saes.yaml is the catalogue)",
                                where="saelens:") from None
        where = "sae_lens/pretrained_saes.yaml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise NotFoundError(f"cannot read the catalogue ({err.strerror or err})", where=where) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML ({str(err).splitlines()[0]})", where=where) from None
    if not isinstance(data, dict):
        raise InputError("a catalogue maps release names to {repo_id, model, saes}", where=where)
    return data


def lookup_saelens(release: str, sae_id: str, *, catalogue: str | os.PathLike | None = None) -> dict[str, Any]:
    """The catalogue entry of ``release``/``sae_id``: repo_id, path, model, l0, ..."""
    data = saelens_catalogue(catalogue)
    where = f"saelens:{release}/{sae_id}"
    entry = data.get(release)
    if not isinstance(entry, dict) or "repo_id" not in entry:
        raise NotFoundError(f"no release {release!r} in SAELens' pretrained_saes.yaml", where=where)
    if entry.get("conversion_func") in _SET_CONVERSIONS:
        if sae_id != "*":
            raise InputError(f"release {release!r} is a transcoder set (config.yaml + layer files); register it "
                             f"whole: saelens:{release}/*", where=where)
        return {"release": release, "sae_id": sae_id, "repo_id": entry["repo_id"], "model": entry.get("model"),
                "path": "", "conversion_func": entry["conversion_func"], "config_overrides": {}}
    for sae in entry.get("saes") or []:
        if isinstance(sae, dict) and str(sae.get("id")) == sae_id:
            out = {"release": release, "sae_id": sae_id, "repo_id": entry["repo_id"], "model": entry.get("model"),
                   "path": str(sae.get("path", sae_id)), "conversion_func": entry.get("conversion_func"),
                   "config_overrides": dict(entry.get("config_overrides") or {})}
            for key in ("l0", "variance_explained", "neuronpedia"):
                if sae.get(key) is not None:
                    out[key] = sae[key]
            return out
    raise NotFoundError(f"release {release!r} has no SAE {sae_id!r}", where=where)


# --- resolving ---------------------------------------------------------------------------


def _units(files: list[str]) -> list[Unit]:
    """Every SAE a repo listing holds, by layout."""
    present = set(files)
    out: list[Unit] = []
    folders = sorted({str(PurePosixPath(f).parent) for f in files})
    claimed: set[str] = set()
    for d in folders:
        pre = "" if d == "." else d + "/"
        path = "" if d == "." else d
        layer_files = sorted(f for f in files if f.startswith(pre) and "/" not in f[len(pre):]
                             and re.fullmatch(r"layer_\d+\.safetensors", f[len(pre):]))
        if f"{pre}config.yaml" in present and layer_files:  # a circuit-tracer transcoder set: one unit
            out.append(Unit("circuit-tracer", path, (f"{pre}config.yaml", *layer_files)))
        elif f"{pre}cfg.json" in present and f"{pre}{art.WEIGHTS}" in present:
            files_ = [f"{pre}cfg.json", f"{pre}{art.WEIGHTS}"]
            if f"{pre}sparsity.safetensors" in present:
                files_.append(f"{pre}sparsity.safetensors")
            out.append(Unit("saelens", path, tuple(files_)))
        elif f"{pre}cfg.json" in present and f"{pre}sae.safetensors" in present:
            out.append(Unit("sparsify", path, (f"{pre}cfg.json", f"{pre}sae.safetensors")))
        elif f"{pre}params.npz" in present:
            out.append(Unit("gemmascope", path, (f"{pre}params.npz",)))
        else:
            continue
        claimed.update(out[-1].files)
    for f in sorted(files):
        if f not in claimed and f.endswith(_OPENAI_SUFFIXES):
            out.append(Unit("openai", f, (f,)))
        elif f not in claimed and f.endswith(".npz"):
            out.append(Unit("gemmascope", f, (f,)))
    return out


def is_glob(text: str) -> bool:
    """Whether a source reference's path is a glob (names any number of SAEs).
    ``saelens:RELEASE/*`` names one transcoder set (the whole release), not a glob."""
    if text.startswith("saelens:") and text.endswith("/*"):
        return False
    return bool(_GLOB.search(text.split("@", 1)[-1] if text.startswith("hf://") else text))


def _glob_match(pattern: str, path: str) -> bool:
    """Segment-wise glob: ``*`` never crosses a ``/`` (as in a shell)."""
    a, b = pattern.split("/"), path.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(y, x) for x, y in zip(a, b))


def _select(units: list[Unit], files: list[str], path: str, *, where: str) -> list[Unit]:
    if _GLOB.search(path):
        hits = [u for u in units if _glob_match(path, u.path)]
        if not hits:
            raise NotFoundError(f"glob {path!r} matches no SAE (the repo holds {len(units)})", where=where)
        return hits
    exact = [u for u in units if u.path == path or path in u.files]
    if exact:
        return exact[:1]
    if path and path.endswith(".safetensors") and path in files:
        return [Unit("openai", path, (path,))]
    under = [u for u in units if not path or u.path.startswith(path + "/")]
    if len(under) > 1:
        raise InputError(f"{len(under)} SAEs under {path or 'the repo root'!r}; name one, or use a glob "
                         f"(e.g. {under[0].path})", where=where)
    if len(under) == 1 and path:
        return under
    inside = sorted(f for f in files if f == path or f.startswith(path + "/") or not path)
    inside = [f for f in inside if f != ".gitattributes"]
    if not inside:
        if not units:
            raise NotFoundError("no SAE in this repo (no cfg.json + weights, params.npz or state dict)", where=where)
        raise NotFoundError(f"no file or folder {path!r} at this revision", where=where)
    shown = ", ".join(PurePosixPath(f).name for f in inside[:5])
    raise ArtifactFormatError(
        f"unknown layout ({shown}); expected SAELens cfg.json + {art.WEIGHTS}, sparsify cfg.json + "
        "sae.safetensors, Gemma Scope params.npz, or an OpenAI state dict", where=where)


def resolve(text: str | Ref, *, catalogue: str | os.PathLike | None = None) -> Resolved:
    """Pin a source reference to a commit and list the SAEs it names (no weights downloaded)."""
    ref = parse_ref(text) if isinstance(text, str) else text
    cat = None
    if ref.kind == "saelens":
        cat = lookup_saelens(ref.saelens_release, ref.sae_id, catalogue=catalogue)
        if cat.get("conversion_func") not in _CONVERSIONS_READ:
            raise ArtifactFormatError(
                f"SAELens converts this release with its own {cat['conversion_func']!r} loader; saekit reads the "
                "SAELens, sparsify, Gemma Scope and OpenAI layouts only", where=ref.text)
        repo, repo_type, rev, path = cat["repo_id"], "model", "main", cat["path"].strip("/")
    elif ref.kind == "hf":
        repo, repo_type, rev, path = ref.hf_repo, ref.hf_type, ref.revision or "main", ref.sae_id or ""
    else:
        raise ReferenceSyntaxError("expected hf://ORG/REPO[@REV]/PATH or saelens:RELEASE/SAE_ID", where=repr(ref.text))
    where = ref.text
    with hub_errors(where):
        info = hub_api().repo_info(repo, repo_type=repo_type, revision=rev, files_metadata=True)
    commit = check_commit(rev, info.sha, where=where)
    siblings = list(info.siblings or [])
    files = check_listing([s.rfilename for s in siblings], where=where)
    lfs = {s.rfilename: s.lfs.sha256 for s in siblings if getattr(s, "lfs", None) is not None
           and getattr(s.lfs, "sha256", None)}
    units = _select(_units(files), files, path, where=where)
    return Resolved(ref, repo, repo_type, rev, commit, units, lfs, cat)


# --- converting --------------------------------------------------------------------------


def _download(res: Resolved, unit: Unit, dest: Path) -> dict[str, str]:
    """Download the unit's files at the pinned commit into ``dest`` (regular files);
    returns path -> sha256, checked against the Hub's LFS sha256 where it gives one."""
    from huggingface_hub import hf_hub_download

    from saekit.registry.artifact import sha256_file

    hashes: dict[str, str] = {}
    where = res.uri(unit)
    for name in unit.files:
        with hub_errors(where), quiet_progress(force=len(res.units) > 1):
            got = hf_hub_download(res.repo, name, repo_type=res.repo_type, revision=res.commit,
                                  endpoint=endpoint(), cache_dir=cache_dir())
        if res.commit not in Path(got).parts:  # the cache files it under the commit the Hub served
            raise IntegrityError(f"{name}: the Hub served another commit than {res.commit}", where=where)
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(got, target)  # a regular file of our own, whatever the HF cache links
        hashes[name] = sha256_file(target)
        want = res.lfs_sha256.get(name)
        if want and want != hashes[name]:
            raise IntegrityError(f"{name}: sha256 {hashes[name][:12]} differs from the Hub's {want[:12]}", where=where)
    return hashes


def upgrade_saelens_cfg(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A pre-6.0 sae-lens cfg.json in the v6 layout, or None if ``raw`` is already v6.

    Follows sae-lens' ``handle_pre_6_0_config``: hook_point -> hook_name,
    activation_fn_str -> activation_fn, topk with activation_fn_kwargs.k -> architecture
    topk, boolean normalize_activations -> "none" / "expected_average_only_in", and the
    LLM keys (model_name, hook_name, ...) moved under ``metadata``.
    """
    version = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
    if version and _major(version) >= 6:
        return None
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    c = {renames.get(k, k): v for k, v in raw.items()}
    arch = c.get("architecture", "standard")
    act = c.get("activation_fn", "relu")
    if act == "topk" and (c.get("activation_fn_kwargs") or {}).get("k") is not None:
        arch, c["k"] = "topk", c["activation_fn_kwargs"]["k"]
    elif act not in ("relu", None) and arch == "standard":
        raise ArtifactFormatError(f"activation_fn {act!r} is not supported (relu, topk)", where="cfg.json")
    if c.get("finetuning_scaling_factor"):
        raise ArtifactFormatError("finetuning_scaling_factor SAEs are not supported", where="cfg.json")
    norm = c.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    meta = {k: c[k] for k in ("model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos",
                              "dataset_path", "model_from_pretrained_kwargs") if c.get(k) is not None}
    meta["sae_lens_version"] = "6.0.0"
    out = {"architecture": arch, "d_in": c["d_in"], "d_sae": c["d_sae"], "dtype": c.get("dtype", "float32"),
           "apply_b_dec_to_input": c.get("apply_b_dec_to_input", True), "normalize_activations": norm or "none",
           "metadata": meta}
    if "k" in c:
        out["k"] = c["k"]
    return out


def _major(version: str) -> int:
    m = re.match(r"\s*(\d+)", str(version))
    return int(m.group(1)) if m else 0


def _gemmascope_context(res: Resolved, unit: Unit) -> tuple[dict[str, Any], dict[str, str]]:
    """Model, hook and width from Gemma Scope's repo and folder names; extra tags."""
    folder = unit.path[: -len("/params.npz")] if unit.path.endswith("/params.npz") else unit.path
    m = _GEMMASCOPE_DIR.search(folder)
    if not m:
        return {}, {}
    layer = int(m["layer"])
    width = int(m["width"]) * {"": 1, "k": 1024, "m": 1024 * 1024}[m["unit"]]
    ctx: dict[str, Any] = {"width": width}
    r = _GEMMASCOPE_REPO.search(res.repo)
    if r:
        ctx["model_name"] = f"google/gemma-2-{r['size']}" + ("-it" if r["kind"] == "it" else "")
        # the TransformerLens hooks Gemma Scope was trained on, as SAELens names them
        # (sae_lens/loading/pretrained_sae_loaders.py, get_gemma_2_config_from_hf): the MLP output
        # after Gemma 2's post-feedforward norm, hook_z for attention (saekit.harness.hooks)
        ctx["hook_name"] = {"res": f"blocks.{layer}.hook_resid_post", "mlp": f"blocks.{layer}.hook_mlp_out",
                            "att": f"blocks.{layer}.attn.hook_z",
                            # transcoders: sae-lens' get_gemma_2_transcoder_config_from_hf
                            "transcoders": f"blocks.{layer}.ln2.hook_normalized"}.get(r["site"])
        if r["site"] == "transcoders":
            ctx["hook_name_out"] = f"blocks.{layer}.hook_mlp_out"
    return ctx, {T.SOURCE_AVERAGE_L0: m["l0"], T.SOURCE_WIDTH: str(width), T.SOURCE_LAYER: str(layer)}


def _read_openai_safetensors(path: Path, where: str) -> Path:
    """An OpenAI state dict stored as safetensors, re-saved for formats.read_openai."""
    import torch
    from safetensors import safe_open

    tensors = art.read_safetensors(path)  # header checked by hand first
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    activation = meta.get("activation")
    if activation not in ("ReLU", "TopK"):
        raise ArtifactFormatError("OpenAI state dict in safetensors needs __metadata__ 'activation' "
                                  "(ReLU or TopK) and, for TopK, 'k'", where=where)
    sd: dict[str, Any] = dict(tensors)
    sd["activation"] = activation
    if activation == "TopK":
        try:
            sd["activation_state_dict"] = {"k": int(meta["k"])}
        except (KeyError, ValueError):
            raise ArtifactFormatError("TopK state dict without an integer __metadata__ 'k'", where=where) from None
    out = path.with_suffix(".pt")
    torch.save(sd, out)  # plain tensors and values only: read back with weights_only=True
    return out


def convert(res: Resolved, unit: Unit, staging: Path, *, model_name: str | None = None,
            hook_name: str | None = None, model_revision: str | None = None) -> tuple[SAE, dict[str, str], dict[str, str]]:
    """(SAE, source file sha256, extra tags) of one unit, downloaded into ``staging``."""
    hashes = _download(res, unit, staging)
    where = res.uri(unit)
    extra: dict[str, str] = {}
    ctx: dict[str, Any] = {}
    local = staging / unit.path if unit.path else staging
    try:
        if unit.layout == "saelens":
            raw = json.loads((local / "cfg.json").read_text())
            if not isinstance(raw, dict):
                raise ArtifactFormatError("cfg.json is not a JSON object", where=where)
            upgraded = upgrade_saelens_cfg(raw)
            if upgraded is not None:
                extra[T.SOURCE_SAELENS_CFG] = "pre-6.0 (upgraded)"
            overrides = (res.saelens or {}).get("config_overrides") or {}
            if overrides:  # as SAELens applies its catalogue's config_overrides to the cfg
                cfg = dict(upgraded or raw)
                meta = dict(cfg.get("metadata") or {})
                for key, value in overrides.items():
                    if key in _V6_TOP_LEVEL:
                        cfg[key] = value
                    else:
                        meta[key] = value
                cfg["metadata"] = meta
                upgraded = cfg
                extra[T.SOURCE_SAELENS_OVERRIDES] = json.dumps(overrides, sort_keys=True)
            if upgraded is not None:
                (local / "cfg.json").write_text(json.dumps(upgraded))
            sae = formats.read_saelens(local, model_name=model_name, hook_name=hook_name, model_revision=model_revision)
        elif unit.layout == "sparsify":
            hook = hook_name
            if hook is None and unit.path:
                name = PurePosixPath(unit.path).name
                # sparsify names modules of the base model: layers.N is block N's output on
                # every family, TransformerLens' blocks.N.hook_resid_post (saekit.harness.hooks)
                block = re.fullmatch(r"layers\.(\d+)", name)
                hook = (f"blocks.{block[1]}.hook_resid_post" if block
                        else f"model.{name}" if name.startswith("layers.") else name)
            sae = formats.read_sparsify(local, model_name=model_name, hook_name=hook, model_revision=model_revision)
        elif unit.layout == "gemmascope":
            ctx, extra = _gemmascope_context(res, unit)
            width = ctx.pop("width", None)
            transcoder = "hook_name_out" in ctx or (res.saelens or {}).get("conversion_func") == "gemma_2_transcoder"
            sae = formats.read_gemmascope(local, model_name=model_name or ctx.get("model_name"),
                                          hook_name=hook_name or ctx.get("hook_name"), model_revision=model_revision,
                                          **({"transcoder": True, "hook_name_out": ctx.get("hook_name_out")}
                                             if transcoder else {}))
            if width is not None and sae.cfg.d_sae != width:
                raise ArtifactFormatError(f"folder says width {width}, params.npz has d_sae {sae.cfg.d_sae}", where=where)
        elif unit.layout == "circuit-tracer":
            sae = formats.read_checkpoint("circuit-tracer", local, model_name=model_name,
                                          model_revision=model_revision)
        else:
            path = local
            if path.suffix == ".safetensors":
                path = _read_openai_safetensors(path, where)
            sae = formats.read_openai(path, model_name=model_name, hook_name=hook_name, model_revision=model_revision)
    except json.JSONDecodeError as err:
        raise ArtifactFormatError(f"cfg.json is not JSON ({err.msg})", where=where) from None
    except KeyError as err:
        raise ArtifactFormatError(f"missing key {err}", where=where) from None
    except SaekitError as err:
        if err.where and str(staging) in err.where:  # name the Hub file, not the temp copy
            rel = err.where.split(str(staging), 1)[1].lstrip("/")
            err.where = hf_uri(res.repo, res.commit, rel, res.repo_type)
            err.args = (f"{err.where}: {err.message}",)
        raise
    _record_source(sae, where)
    return sae, hashes, extra


def _record_source(obj: Any, where: str) -> None:
    """The pinned source URI in the config's provenance (each layer's, for a set)."""
    from saekit.kernels.transcoder import TranscoderSet

    for sae in ([obj[i] for i in obj.layers] if isinstance(obj, TranscoderSet) else [obj]):
        prov = sae.cfg.provenance.model_copy(update={"source": where})
        sae.cfg = sae.cfg.model_copy(update={"provenance": prov})


def source_tags(res: Resolved, unit: Unit, hashes: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    tags = {
        SOURCE: res.uri(unit),
        T.SOURCE_REPO: res.repo if res.repo_type == "model" else f"{res.repo_type}s/{res.repo}",
        T.SOURCE_COMMIT: res.commit,
        T.SOURCE_PATH: unit.path,
        T.SOURCE_LAYOUT: unit.layout,
        T.SOURCE_FILES: json.dumps(hashes, sort_keys=True),
        **extra,
    }
    if res.saelens:
        tags[T.SOURCE_SAELENS] = f"{res.saelens['release']}/{res.saelens['sae_id']}"
    return tags


# --- entry points ------------------------------------------------------------------------


def _progress(total: int, desc: str):
    """One progress bar over the SAEs of a glob (silent with SAEKIT_QUIET=1; tqdm itself, so
    that switching off huggingface_hub's per-file bars leaves it on)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sae", disable=current().quiet or total <= 1)


def load(text: str | Ref, *, catalogue: str | os.PathLike | None = None, **context: Any) -> SAE:
    """An SAE straight from the Hub, converted in memory (one SAE; no glob)."""
    res = resolve(text, catalogue=catalogue)
    if len(res.units) != 1:
        raise InputError(f"names {len(res.units)} SAEs; load one at a time", where=res.ref.text)
    with tempfile.TemporaryDirectory(prefix="saekit-hub-") as tmp:
        sae, _, _ = convert(res, res.units[0], Path(tmp), **context)
    from saekit.schemas import SAERef

    d_sae = sae[sae.layers[0]].cfg.d_sae if _is_set(sae) else sae.cfg.d_sae
    sae.ref = SAERef(name=res.units[0].path or res.repo, version=res.commit, d_sae=d_sae)
    return sae


def _is_set(obj: Any) -> bool:
    from saekit.kernels.transcoder import TranscoderSet

    return isinstance(obj, TranscoderSet)


def import_to(text: str, dest: Path, *, catalogue: str | os.PathLike | None = None,
              **context: Any) -> list[dict[str, str]]:
    """Convert what a source reference names into canonical artifact folders under ``dest``
    (``dest`` itself for one SAE, ``dest/<path>`` for each match of a glob)."""
    res = resolve(text, catalogue=catalogue)
    glob = len(res.units) > 1 or bool(_GLOB.search(res.ref.sae_id or ""))
    out = []
    with _progress(len(res.units), "import") as bar, tempfile.TemporaryDirectory(prefix="saekit-hub-") as tmp:
        for i, unit in enumerate(res.units):
            staging = Path(tmp) / str(i)
            sae, hashes, _ = convert(res, unit, staging, **context)
            target = Path(dest) / unit.path if glob else Path(dest)
            sha = tset.save_set(sae, target) if _is_set(sae) else art.save_artifact(sae, target)
            out.append({"source": res.uri(unit), "dest": str(target), "sha256": sha, "layout": unit.layout})
            bar.update(1)
    return out


def register(
    text: str,
    name: str,
    *,
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    catalogue: str | os.PathLike | None = None,
    **context: Any,
) -> list[VersionInfo]:
    """Register what a source reference names as versions of ``name``, one per SAE.

    Resumable: an SAE already registered from the same pinned source (same commit and
    path) is skipped, and identical content returns its existing version, so re-running
    after a failure registers only what is missing and never duplicates.
    """
    from saekit.registry import store

    store.check_name(name)
    res = resolve(text, catalogue=catalogue)
    done: dict[str, VersionInfo] = {}
    try:
        for info in store.list_versions(name):
            if info.tags.get(SOURCE):
                done.setdefault(info.tags[SOURCE], info)
    except NotFoundError:
        pass
    out: list[VersionInfo] = []
    with _progress(len(res.units), f"register {name}") as bar, \
            tempfile.TemporaryDirectory(prefix="saekit-hub-") as tmp:
        first = None
        if len(res.units) > 1:
            first = convert(res, res.units[0], Path(tmp) / "0", **context)
            if _is_transcoder(first[0]):  # a glob of per-layer transcoders is one set, one version
                info = _register_set(res, name, first, Path(tmp), done, bar, tags, description, context)
                if alias:
                    store.set_alias(name, alias, info.version)
                    info.aliases = sorted(set(info.aliases) | {alias})
                return [info]
        for i, unit in enumerate(res.units):
            uri = res.uri(unit)
            if uri in done:  # registered from this very commit and path before: resume
                info = done[uri]
                if res.saelens and T.SOURCE_SAELENS not in info.tags:
                    extra = {T.SOURCE_SAELENS: f"{res.saelens['release']}/{res.saelens['sae_id']}"}
                    _set_source_tags(info, extra)
                    info.tags.update(extra)
                if tags:  # the caller's tags land on it, as on any identical registration
                    store.set_tags(name, info.version, tags)
                    info.tags.update(tags)
                out.append(info)
                bar.update(1)
                continue
            sae, hashes, extra = first if (i == 0 and first is not None) else convert(
                res, unit, Path(tmp) / str(i), **context)
            info = store.register(name, sae, tags=tags, description=description)
            provenance = source_tags(res, unit, hashes, extra)
            _set_source_tags(info, provenance)
            info.tags.update(provenance)
            out.append(info)
            bar.update(1)
            shutil.rmtree(Path(tmp) / str(i), ignore_errors=True)
    if alias:
        store.set_alias(name, alias, out[-1].version)
        out[-1].aliases = sorted(set(out[-1].aliases) | {alias})
    return out


def _is_transcoder(obj: Any) -> bool:
    from saekit.kernels.transcoder import Transcoder

    return isinstance(obj, Transcoder)


def _register_set(res: Resolved, name: str, first: tuple, tmp: Path, done: dict[str, VersionInfo], bar: Any,
                  tags: dict[str, str] | None, description: str | None, context: dict[str, Any]) -> VersionInfo:
    """Every unit of a glob, each a transcoder, as one set version: converted and written one
    layer at a time (its layer from the unit's path, else its hook), then registered."""
    from saekit.registry import store
    from saekit.registry.transcoder_formats import layer_of

    pattern = res.ref.sae_id or ""
    uri = hf_uri(res.repo, res.commit, pattern, res.repo_type)
    if uri in done:  # registered from this very commit and glob before
        bar.update(len(res.units))
        return done[uri]
    hashes: dict[str, str] = {}

    def layers() -> Iterator[tuple[int, Any]]:
        for i, unit in enumerate(res.units):
            tc, unit_hashes, _ = first if i == 0 else convert(res, unit, tmp / str(i), **context)
            if not _is_transcoder(tc):
                raise ArtifactFormatError(f"{unit.path} is a {tc.cfg.architecture} SAE; a glob of transcoders "
                                          "registers one set and holds transcoders only", where=res.uri(unit))
            layer = layer_of(unit.path)
            layer = layer if layer is not None else layer_of(tc.hook_in or "")
            if layer is None:
                raise ArtifactFormatError("cannot tell which layer this transcoder is (name it layer_<i>)",
                                          where=res.uri(unit))
            hashes.update(unit_hashes)
            yield layer, tc
            shutil.rmtree(tmp / str(i), ignore_errors=True)
            bar.update(1)

    model = context.get("model_name")
    tset.write_set(layers(), tmp / "set", model_name=model, model_revision=context.get("model_revision"))
    info = store.register(name, tmp / "set", tags=tags, description=description)
    layouts = sorted({u.layout for u in res.units})
    provenance = {SOURCE: uri, T.SOURCE_REPO: res.repo if res.repo_type == "model" else f"{res.repo_type}s/{res.repo}",
                  T.SOURCE_COMMIT: res.commit, T.SOURCE_PATH: pattern, T.SOURCE_LAYOUT: ",".join(layouts),
                  T.SOURCE_FILES: json.dumps(hashes, sort_keys=True)}
    if res.saelens:
        provenance[T.SOURCE_SAELENS] = f"{res.saelens['release']}/{res.saelens['sae_id']}"
    _set_source_tags(info, provenance)
    info.tags.update(provenance)
    return info


def _set_source_tags(info: VersionInfo, tags: dict[str, str]) -> None:
    """Provenance tags: saekit-owned, written here only (users cannot set saekit.*), through
    the registry's public API for saekit's own tags (retries and error translation there)."""
    from saekit.registry import store

    store.record_tags(info.name, info.version, tags)
