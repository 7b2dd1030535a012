"""The docs: the README's first lines, its size, and the generated performance page."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _perf_page():
    spec = importlib.util.spec_from_file_location("perf_page", ROOT / "scripts" / "perf_page.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_performance_page_is_generated():
    # No number on the page is copied by hand: it is exactly the script's output.
    page = (ROOT / "docs" / "performance.md").read_text()
    assert page == _perf_page().render(), "docs/performance.md is stale: run python3 scripts/perf_page.py"


def test_readme_starts_with_the_two_commands_and_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[3] == "./scripts/setup.sh && saekit demo            # main job: the end-to-end demo on the embedded defaults"
    assert lines[4] == "./scripts/setup.sh && python3 -m pytest -q   # the tests (what .ci/run runs)"
    assert len(lines) <= 150
    assert "./scripts/setup.sh && python3 -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_every_nav_page_exists():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = [p for entry in nav for p in entry.values()]
    assert all((ROOT / "docs" / p).is_file() for p in pages), pages


def test_performance_page_opens_with_one_headline_table():
    """Right under the title: one table, a row per headline measure, each linking its result
    file (docs/results is benchmarks/results, so MkDocs publishes the files beside the page)."""
    import re

    lines = (ROOT / "docs" / "performance.md").read_text().splitlines()
    body = [ln for ln in lines[1:] if ln.strip() and not ln.startswith("<!--")]
    table = body[: next(i for i, ln in enumerate(body) if not ln.startswith("|"))]
    assert table[0] == "| measure | saekit | compared with (same run) | ratio | machine | date | result file |"
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    assert len(rows) == len(_perf_page().HEADLINES)
    for measure, ours, theirs, ratio, machine, date, link in rows:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and re.search(r"\d", ours) and re.search(r"\d", theirs)
        assert re.fullmatch(r"[\d.]+x (faster|slower|its time.*)", ratio), ratio
        name = re.fullmatch(r"\[(.+)\]\(results/(.+)\)", link)
        assert name and name[1] == name[2] and (ROOT / "docs" / "results" / name[2]).is_file(), link
        assert (ROOT / "docs" / "results").resolve() == (ROOT / "benchmarks" / "results").resolve()


def test_headline_takes_the_newest_result_and_its_peer_from_the_same_run(tmp_path):
    import json

    def result(date, ours, theirs):
        return {"benchmark": "load", "repeats": 3, "saekit_load": {"total": ours},
                "sae_lens_load_from_disk": {"total": theirs},
                "environment": {"date": date, "cpu": "x86_64", "cores": "2"}}

    (tmp_path / "load_new.json").write_text(json.dumps(result("2026-12-02T00:00:00+00:00", 2.0, 5.0)))
    (tmp_path / "load_old.json").write_text(json.dumps(result("2026-11-01T00:00:00+00:00", 9.0, 1.0)))
    table = _perf_page().headline(tmp_path).splitlines()
    assert len(table) == 3, table  # the head, its rule, one row: the newest file
    assert table[2] == ("| Load an SAE in a new process (import torch and the library, load), median s of 3 | 2 | "
                        "SAELens `load_from_disk` 5 | 2.50x faster | x86_64, 2 CPUs | 2026-12-02 | "
                        "[load_new.json](results/load_new.json) |")
