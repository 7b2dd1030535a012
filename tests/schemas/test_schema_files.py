"""The committed JSON Schemas are what the models generate, and are proper draft 2020-12."""

from __future__ import annotations

import json
import re
import shutil

import jsonschema
import pytest

from saekit.cli import main
from saekit.schemas import export as ex


@pytest.mark.parametrize("stem", list(ex.MODELS))
def test_committed_schema_matches_model(stem):
    path = ex.JSON_DIR / f"{stem}.json"
    assert path.is_file(), f"{path} missing: run `saekit schema export`"
    assert path.read_text() == ex.render(stem), f"{path.name} drifted from the model: run `saekit schema export`"


@pytest.mark.parametrize("stem", list(ex.MODELS))
def test_committed_schema_is_draft_2020_12_with_versioned_id(stem):
    schema = ex.load_committed(stem)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert re.fullmatch(r"https://saekit\.dev/schemas/\d+\.\d+/" + stem + r"\.json", schema["$id"])
    jsonschema.Draft202012Validator.check_schema(schema)


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_schema_check_exit_codes(tmp_path, monkeypatch, capsys):
    code, out, _ = _run(["schema", "check"], capsys)
    assert code == 0, out
    stale = tmp_path / "json"
    shutil.copytree(ex.JSON_DIR, stale)
    doc = json.loads((stale / "feature_card.json").read_text())
    doc["title"] = "Edited by hand"
    (stale / "feature_card.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    monkeypatch.setattr(ex, "JSON_DIR", stale)
    code, out, _ = _run(["schema", "check", "--json"], capsys)
    assert code == 1
    assert json.loads(out)["stale"] == ["feature_card"]


def test_validation_modules_import_only_pydantic():
    """saekit.schemas imports nothing else of the project, and no jsonschema at import time."""
    import subprocess
    import sys

    code = (
        "import sys; import saekit.schemas.validate, saekit.schemas.convert;"
        "bad = [m for m in sys.modules if m.startswith('saekit.') and not m.startswith('saekit.schemas')"
        " or m.split('.')[0] in ('jsonschema', 'torch', 'numpy', 'mlflow')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
