"""saekit register / ls / show / alias / pull / import / export, with --json and exit codes."""

from __future__ import annotations

import json

from saekit.cli import main
from saekit.registry import artifact as art
from tests.registry.conftest import make_artifact


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_flow(tmp_path, capsys):
    a = make_artifact(tmp_path / "a", seed=1)
    b = make_artifact(tmp_path / "b", seed=2)
    code, out, err = run(capsys, "register", str(a), "--name", "res", "--alias", "candidate",
                         "--tag", "team=interp", "--description", "first", "--json")
    assert code == 0, err
    v1 = json.loads(out)
    assert v1["version"] == 1 and v1["aliases"] == ["candidate"] and v1["tags"]["team"] == "interp"
    assert v1["sha256"] == art.artifact_sha256(a)
    assert run(capsys, "register", str(b), "--name", "res")[0] == 0

    code, out, _ = run(capsys, "ls", "--json")
    assert code == 0 and [(v["name"], v["version"]) for v in json.loads(out)] == [("res", 1), ("res", 2)]
    code, out, _ = run(capsys, "ls", "res")
    assert code == 0 and "res/1" in out and "@candidate" in out

    code, out, _ = run(capsys, "show", "res@candidate", "--json")
    assert code == 0 and json.loads(out)["version"] == 1

    assert run(capsys, "alias", "set", "res", "production", "2", "--json")[0] == 0
    code, out, _ = run(capsys, "show", "res@production", "--json")
    assert json.loads(out)["version"] == 2
    assert run(capsys, "alias", "rm", "res", "production")[0] == 0
    code, _, err = run(capsys, "show", "res@production")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1

    code, out, _ = run(capsys, "pull", "res/1", str(tmp_path / "pulled"), "--json")
    assert code == 0 and json.loads(out)["sha256"] == v1["sha256"]
    assert art.artifact_sha256(tmp_path / "pulled") == v1["sha256"]

    code, out, _ = run(capsys, "export", "sparsify", "res/1", str(tmp_path / "sp"), "--json")
    assert code == 0 and (tmp_path / "sp" / "sae.safetensors").is_file()

    # usage / input errors exit 2 with one line; a failed integrity check exits 1
    assert run(capsys, "show", "res@@x")[0] == 2
    assert run(capsys, "alias", "set", "res", "production", "7")[0] == 2
    assert run(capsys, "register", str(tmp_path / "missing"), "--name", "res")[0] == 2
    assert run(capsys, "register", str(a), "--name", "res", "--tag", "novalue")[0] == 2


def test_cli_integrity_failure_exits_1(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from saekit.registry import store

    a = make_artifact(tmp_path / "a")
    code, out, _ = run(capsys, "register", str(a), "--name", "res", "--json")
    info = json.loads(out)
    (Path(info["source"].removeprefix("file://")) / "cfg.json").write_text("{}")  # tamper in the store
    shutil.rmtree(store.cache_path(info["sha256"]))
    code, _, err = run(capsys, "pull", "res/1", str(tmp_path / "p"))
    assert code == 1 and "cfg.json: sha256 mismatch" in err and err.count("\n") == 1
