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
