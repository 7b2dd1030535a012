"""``saekit release build|verify|publish|hub`` and ``saekit demo`` (the main job).

Heavy imports (torch, mlflow, huggingface_hub, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saekit.cli.app import JSON_OPTION, app, emit, release_app, settings_of


@release_app.command("build")
def build_cmd(
    manifest: Path = typer.Argument(..., help="Release manifest (YAML, ReleaseManifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write: missing or empty, or with --force a bundle saekit built."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it holds a bundle saekit built (nothing else is ever replaced)."),
    no_check: bool = typer.Option(
        False, "--no-check",
        help="Refuse versions without a check record instead of checking them (a record is always required).",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Build a release bundle in Hugging Face repo layout from a manifest."""
    from saekit.releases.bundle import build, verify

    path = build(manifest, out, run_checks=not no_check, force=force)
    release = verify(path)
    data = {"bundle": str(path), "release_id": release.release_id, "tag": release.tag,
            "saes": [s.model_dump(mode="json", include={"sae_id", "registry", "sha256", "gate"}) for s in release.saes],
            "files": len(release.files) + 2}
    emit(data, json_out, f"built {release.release_id} {release.tag}: {data['files']} files in {path}")


@release_app.command("verify")
def verify_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Check a bundle against its SHA256SUMS."""
    from saekit.releases.bundle import verify

    release = verify(bundle)
    emit({"bundle": str(bundle), "ok": True, "tag": release.tag}, json_out, f"ok: {bundle} matches SHA256SUMS")


@release_app.command("publish")
def publish_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder built by `saekit release build` or `saekit release transcoders`."),
    repo: Optional[str] = typer.Option(None, "--repo", help="ORG/NAME on the Hub (default: the manifest's hub_repo)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Verify and show what would be committed; no network."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private if it does not exist."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Publish a bundle: create the repo, one commit, tag v<version>, record it on the registry."""
    from saekit.releases.publish import publish
    from saekit.releases.transcoder_release import is_set_release, publish_set_release

    if is_set_release(bundle):  # built by `saekit release transcoders`
        if dry_run:
            raise typer.BadParameter("--dry-run is not supported for a transcoder set release")
        result = publish_set_release(bundle, repo, endpoint=endpoint, private=private)
    else:
        result = publish(bundle, repo, dry_run=dry_run, endpoint=endpoint, private=private)
    emit(result.to_dict(), json_out, result.message)


@release_app.command("hub")
def hub_cmd(
    root: Path = typer.Argument(..., help="Folder holding the loopback Hub's repos."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Serve a loopback Hugging Face Hub (for tests and offline demos) until Ctrl-C."""
    from saekit.testing.loopback_hub import main

    main([str(root), str(port)])


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    size: str = typer.Option("demo", "--size", help="Demo SAE size: 'demo' (576 -> 4608, k 32) or 'test' (small, fast)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Tokens for the check (default: the harness default)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Work folder (default: $SAEKIT_HOME/demo)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build the release but do not publish (no Hub)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """The whole story on embedded defaults: train (cached) -> register -> check -> alias ->
    release bundle -> publish to a loopback Hub -> load back by hf:// name."""
    from saekit.demo import run_demo, summary_table

    result = run_demo(size=size, tokens=tokens, out=out, dry_run=dry_run, settings=settings_of(ctx))
    emit(result, json_out, summary_table(result))
    if not result.get("ok", False):
        raise typer.Exit(1)
