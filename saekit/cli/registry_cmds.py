"""Registry commands: register, import, export, ls, show, pull, alias set / alias rm.

Heavy imports (mlflow, torch) happen inside the commands, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from saekit.cli.app import JSON_OPTION, alias_app, app, emit
from saekit.registry import tags as T
from saekit.schemas import InputError
from saekit.schemas.masking import mask

FORMAT_HELP = "saekit | saelens | sparsify | gemmascope | gemmascope-transcoder | openai | circuit-tracer"


def _parse_tags(pairs: List[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError("expected --tag KEY=VALUE", where=repr(pair))
        tags[key] = value
    return tags


def _version_text(info) -> str:
    t = info.tags
    shape = f"{t.get(T.ARCHITECTURE, '?')} {t.get(T.D_IN, '?')}x{t.get(T.D_SAE, '?')}"
    if t.get(T.K):
        shape += f" k={t[T.K]}"
    aliases = ",".join(info.aliases) or "-"
    gate = t.get(T.GATE, "-")
    return f"{info.name}/{info.version}\t{info.sha256[:12]}\t{shape}\t@{aliases}\tgate={gate}"


def _is_remote(text: str) -> bool:
    return text.startswith(("hf://", "saelens:"))


CATALOGUE_HELP = "A catalogue in SAELens' pretrained_saes.yaml format (default: the installed sae-lens package's)."


@app.command("register")
def register_cmd(
    source: str = typer.Argument(..., metavar="SOURCE", help="Canonical artifact folder, a checkpoint with --from, "
                                 "hf://ORG/REPO@REV/PATH (@REV optional, default main; PATH may be a glob) or saelens:RELEASE/SAE_ID."),
    name: str = typer.Option(..., "--name", "-n", help="Registered name (letters, digits, . _ -)."),
    alias: Optional[str] = typer.Option(None, "--alias", "-a", help="Point this alias at the version."),
    tag: List[str] = typer.Option([], "--tag", "-t", help="KEY=VALUE version tag (repeatable)."),
    description: Optional[str] = typer.Option(None, "--description", "-d"),
    from_format: Optional[str] = typer.Option(None, "--from", help=f"Import first from: {FORMAT_HELP}."),
    model: Optional[str] = typer.Option(None, "--model", help="Language model id (importers that lack it)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Language model revision."),
    hook: Optional[str] = typer.Option(None, "--hook", help="Hook name (importers that lack it); for a transcoder, "
                                       "the module whose input it reads and whose output it predicts "
                                       "(e.g. model.layers.4.mlp)."),
    hook_in: Optional[str] = typer.Option(None, "--hook-in", help="Transcoders: the module whose input they read, "
                                          "where it differs from --hook-out."),
    hook_out: Optional[str] = typer.Option(None, "--hook-out", help="Transcoders: the module whose output they predict."),
    catalogue: Optional[Path] = typer.Option(None, "--saelens-catalogue", help=CATALOGUE_HELP),
    json_out: bool = JSON_OPTION,
) -> None:
    """Register an artifact as a new version of NAME (identical content returns the existing one).
    A transcoder set (a folder with set.json, a circuit-tracer set, a folder of per-layer
    transcoder folders) is one version.

    From the Hub (hf://, saelens:) the layout is detected, the revision pinned to its
    commit, and the source recorded on the version; a glob registers each match.
    """
    tags = _parse_tags(tag)
    if hook is not None and hook_in is not None:
        raise InputError("give --hook (one module, in and out) or --hook-in/--hook-out, not both", where="--hook-in")
    hook = hook if hook is not None else hook_in
    if _is_remote(source):
        if hook_out is not None:
            raise InputError("--hook-out is for local checkpoints (a Hub source names its hooks)", where=source)
        if from_format:
            raise InputError("--from is for local checkpoints; the Hub layout is detected", where=source)
        from saekit.registry import hub_source

        infos = hub_source.register(source, name, alias=alias, tags=tags, description=description,
                                    catalogue=catalogue, model_name=model, hook_name=hook, model_revision=revision)
        data = [i.to_dict() for i in infos]
        emit(data if len(data) != 1 else data[0], json_out, [
            f"registered {i.ref} sha256:{i.sha256} <- {i.tags.get(hub_source.SOURCE, '')}"
            + (f" @{','.join(i.aliases)}" if i.aliases else "") for i in infos])
        return
    from saekit.registry.folders import register_checkpoint

    info = register_checkpoint(
        name, source, from_format=from_format, tags=tags, description=description, alias=alias,
        model_name=model, hook_name=hook, model_revision=revision, hook_name_out=hook_out,
    )
    emit(info.to_dict(), json_out, f"registered {info.ref} sha256:{info.sha256}" + (
        f" @{','.join(info.aliases)}" if info.aliases else ""))


@app.command("import")
def import_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT|SOURCE", help=f"{FORMAT_HELP}; or hf://... / saelens:... "
                              "(then the next argument is DEST)"),
    src: Path = typer.Argument(..., help="Checkpoint folder or file (DEST for an hf:// or saelens: SOURCE)."),
    dest: Optional[Path] = typer.Argument(None, help="Canonical artifact folder to write."),
    model: Optional[str] = typer.Option(None, "--model"),
    revision: Optional[str] = typer.Option(None, "--revision"),
    hook: Optional[str] = typer.Option(None, "--hook"),
    catalogue: Optional[Path] = typer.Option(None, "--saelens-catalogue", help=CATALOGUE_HELP),
    json_out: bool = JSON_OPTION,
) -> None:
    """Convert a checkpoint of another library (local, or on the Hub) into a canonical saekit artifact."""
    if _is_remote(fmt):
        if dest is not None:
            raise InputError("usage: saekit import hf://ORG/REPO@REV/PATH DEST", where=str(dest))
        from saekit.registry import hub_source

        done = hub_source.import_to(fmt, src, catalogue=catalogue, model_name=model, hook_name=hook,
                                    model_revision=revision)
        emit(done if len(done) != 1 else done[0], json_out,
             [f"{d['dest']} sha256:{d['sha256']} <- {d['source']}" for d in done])
        return
    if dest is None:
        raise InputError("usage: saekit import FORMAT SRC DEST")
    from saekit.registry.formats import import_checkpoint

    sha = import_checkpoint(fmt, src, dest, model_name=model, hook_name=hook, model_revision=revision)
    emit({"format": fmt, "src": str(src), "dest": str(dest), "sha256": sha}, json_out, f"{dest} sha256:{sha}")


@app.command("export")
def export_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="saelens | sparsify | circuit-tracer (transcoder sets)"),
    ref: str = typer.Argument(..., help="Reference (NAME, NAME@ALIAS, NAME/VERSION, ..., or a folder)."),
    dest: Path = typer.Argument(..., help="Folder to write."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Write an SAE, transcoder or transcoder set in another library's layout (SAELens, sparsify, circuit-tracer)."""
    import saekit
    from saekit.registry.formats import export

    sae = saekit.load(ref)
    files = export(sae, fmt, dest)
    emit({"format": fmt, "ref": ref, "dest": str(dest), "files": [str(f) for f in files]}, json_out, str(dest))


@app.command("ls")
def ls_cmd(
    name: Optional[str] = typer.Argument(None, help="Only this registered name."),
    json_out: bool = JSON_OPTION,
) -> None:
    """List ready versions (name/version, sha256, shape, aliases, gate)."""
    from saekit.registry import store

    infos = store.list_versions(name)
    emit([i.to_dict() for i in infos], json_out, [_version_text(i) for i in infos] or "(no versions)")


@app.command("show")
def show_cmd(ref: str = typer.Argument(...), json_out: bool = JSON_OPTION) -> None:
    """Show the version a reference resolves to: sha256, aliases, tags, source."""
    from saekit.registry import store

    info = store.resolve(ref)
    lines = [_version_text(info), f"sha256: {info.sha256}", f"run: {info.run_id}",
             f"source: {mask(info.source or '')}"]
    if info.description:
        lines.append(f"description: {info.description}")
    lines += [f"  {k} = {v}" for k, v in sorted(info.tags.items()) if k != T.FILES]
    emit(info.to_dict(), json_out, lines)


@app.command("pull")
def pull_cmd(
    ref: str = typer.Argument(...),
    dest: Path = typer.Argument(..., help="Folder to copy the verified artifact into."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Fetch an artifact (verified, through the cache) and copy it to DEST."""
    from saekit.registry.folders import pull

    sha, copied = pull(ref, dest)
    emit({"ref": ref, "dest": str(dest), "sha256": sha, "files": copied}, json_out, f"{dest} sha256:{sha}")


@alias_app.command("set")
def alias_set_cmd(
    name: str = typer.Argument(...),
    alias: str = typer.Argument(..., help="e.g. production, candidate"),
    version: int = typer.Argument(...),
    json_out: bool = JSON_OPTION,
) -> None:
    """Point NAME@ALIAS at VERSION (moves the alias if it exists)."""
    from saekit.registry import store

    store.set_alias(name, alias, version)
    emit({"name": name, "alias": alias, "version": version}, json_out, f"{name}@{alias} -> {name}/{version}")


@alias_app.command("rm")
def alias_rm_cmd(
    name: str = typer.Argument(...),
    alias: str = typer.Argument(...),
    json_out: bool = JSON_OPTION,
) -> None:
    """Delete NAME@ALIAS."""
    from saekit.registry import store

    store.delete_alias(name, alias)
    emit({"name": name, "alias": alias, "deleted": True}, json_out, f"removed {name}@{alias}")
