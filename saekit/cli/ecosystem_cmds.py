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
    from saekit.releases.bundle import export_neuronpedia_release
    from saekit.releases.ecosystem import export_card_file

    if src.is_dir():
        written = export_neuronpedia_release(src, out, model_id=model_id, source_id=source_id, creator=creator)
    else:
        written = [export_card_file(src, out, model_id=model_id, source_id=source_id, creator=creator)]
    emit(written, json_out, [f"wrote {w['cards']} features to {w['folder']}" for w in written])


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
    from saekit.schemas.card_files import read_cards, write_cards

    if cards_path is not None:
        cards, added = eco.annotate_from_neuronpedia(read_cards(cards_path), src, source=source, d_sae=d_sae)
        write_cards(cards, out, sort=False)
        emit({"cards": len(cards), "annotations_added": added, "out": str(out)}, json_out,
             f"added {added} annotations; wrote {len(cards)} cards to {out}")
        return
    cards = eco.import_neuronpedia(src)
    write_cards(cards, out, sort=False)
    emit({"cards": len(cards), "out": str(out)}, json_out, f"wrote {len(cards)} cards to {out}")
