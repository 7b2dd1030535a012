"""``saekit cards export neuronpedia`` and ``saekit cards import neuronpedia``.

Neuronpedia's upload layout (SAEDashboard's neuronpedia export) out of a release or a cards
file, and back: a whole export read into cards, or its explanations added to existing
cards as annotations (checked against the cards' SAE and width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saekit.cli.app import JSON_OPTION, cards_app, emit

export_app = typer.Typer(help="Write feature cards in other tools' layouts.", no_args_is_help=True)
import_app = typer.Typer(help="Read feature cards from other tools' layouts.", no_args_is_help=True)
cards_app.add_typer(export_app, name="export")
cards_app.add_typer(import_app, name="import")


@export_app.command("neuronpedia")
def export_neuronpedia_cmd(
    src: Path = typer.Argument(..., metavar="RELEASE_OR_CARDS", help="A release bundle folder, or a cards file "
                               "(.jsonl, .jsonl.gz) of one SAE."),
    out: Path = typer.Option(..., "--out", "-o", help="Export root: OUT/<modelId>/<sourceId>/..."),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="Neuronpedia model id (cards file: required "
                                           "unless the cards came from Neuronpedia)."),
    source_id: Optional[str] = typer.Option(None, "--source-id", help="Neuronpedia source id, e.g. 6-res-mine."),
    creator: str = typer.Option("saekit", "--creator", help="Creator name written on the rows."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Write feature cards in Neuronpedia's upload layout (features, activations, explanations as jsonl.gz)."""
    import json

    from saekit.releases import ecosystem as eco
    from saekit.releases.bundle import release_cards
    from saekit.schemas import InputError
    from saekit.schemas.card_files import read_cards

    written = []
    if src.is_dir():
        for release, entry, cards in release_cards(src):
            if not cards:
                continue
            cfg = json.loads((src / entry["sae_id"] / "cfg.json").read_text())
            model, source = eco.neuronpedia_ids(release, entry, cfg)
            folder = eco.export_neuronpedia(
                cards, out, model_id=model_id or model, source_id=source if len(release["saes"]) > 1 or not source_id
                else source_id, creator=creator,
                release={"name": release["release_id"], "description": release["manifest"].get("description"),
                         "url": f"https://huggingface.co/{release['hub_repo']}"},
                hf_repo=release["hub_repo"], hf_folder=entry["sae_id"], saelens_release=release["release_id"])
            written.append({"sae_id": entry["sae_id"], "folder": str(folder), "cards": len(cards)})
        if not written:
            raise InputError("the release carries no feature cards", where=str(src))
    else:
        cards = read_cards(src)
        if not cards:
            raise InputError("no cards", where=str(src))
        np_keep = cards[0].extra.get("neuronpedia") or {}
        model = model_id or np_keep.get("modelId")
        source = source_id or np_keep.get("layer")
        if not model or not source:
            raise InputError("pass --model-id and --source-id (the cards do not name a Neuronpedia source)",
                             where=str(src))
        folder = eco.export_neuronpedia(cards, out, model_id=model, source_id=source, creator=creator)
        written.append({"folder": str(folder), "cards": len(cards)})
    emit(written, json_out, "\n".join(f"wrote {w['cards']} features to {w['folder']}" for w in written))


@import_app.command("neuronpedia")
def import_neuronpedia_cmd(
    src: Path = typer.Argument(..., metavar="EXPORT", help="A Neuronpedia export (source folder or root), or a "
                               "file of Explanation rows (.jsonl, .jsonl.gz, .json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cards file to write (.jsonl or .jsonl.gz)."),
    cards_path: Optional[Path] = typer.Option(None, "--cards", help="Add the export's explanations to these cards "
                                              "as annotations (instead of reading whole cards)."),
    source: Optional[str] = typer.Option(None, "--source", help="MODEL/SOURCE_ID on Neuronpedia the cards describe."),
    d_sae: Optional[int] = typer.Option(None, "--d-sae", min=1, help="SAE width (if the cards do not carry it)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Read a Neuronpedia export into cards, or add its explanations to existing cards."""
    from saekit.releases import ecosystem as eco
    from saekit.schemas import InputError
    from saekit.schemas.card_files import read_cards, write_cards

    if cards_path is not None:
        cards, added = eco.annotate_from_neuronpedia(read_cards(cards_path), src, source=source, d_sae=d_sae)
        write_cards(cards, out, sort=False)
        emit({"cards": len(cards), "annotations_added": added, "out": str(out)}, json_out,
             f"added {added} annotations; wrote {len(cards)} cards to {out}")
        return
    sources = eco.find_sources(src) if src.is_dir() else []
    if len(sources) != 1:
        raise InputError(f"expected one Neuronpedia source folder, found {len(sources)}", where=str(src))
    cards = eco.read_neuronpedia(sources[0])
    write_cards(cards, out, sort=False)
    emit({"cards": len(cards), "out": str(out)}, json_out, f"wrote {len(cards)} cards to {out}")
