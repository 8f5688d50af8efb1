"""The guide in docs/: every page's figure exists, is small, and comes from make_figures.py."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [
    "equalized-lr",
    "weight-norm",
    "spectral-norm",
    "fixup",
    "cbn",
    "class-norm",
    "instruments",
]


def _make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(page: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())


@pytest.mark.parametrize("page", PAGES)
def test_page_exists_with_its_figures(page):
    path = DOCS / f"{page}.md"
    images = _images(path)
    assert images, f"{page}.md shows no figure"
    for image in images:
        figure = (path.parent / image).resolve()
        assert figure.is_file(), f"{page}.md: missing {image}"
        assert figure.stat().st_size < 200 * 1024, f"{image} is over 200 KB"
    assert "RESULTS_" not in path.read_text()  # no placeholder left


def test_every_figure_is_made_by_the_script_and_shown_somewhere():
    made = {dst for _, figures in _make_figures().JOBS.values() for dst in figures.values()}
    shown = {Path(i).name for p in DOCS.glob("*.md") for i in _images(p)}
    assert shown <= made  # regenerable
    assert made <= shown  # none made for nothing
    index = (DOCS / "README.md").read_text()
    for page in PAGES:
        assert f"({page}.md)" in index


def test_readme_links_the_guide():
    assert "(docs/README.md)" in (ROOT / "README.md").read_text()


def test_unknown_job_is_rejected(capsys):
    with pytest.raises(SystemExit):
        _make_figures().main(["--only", "nope"])
    assert "unknown figure job(s) nope" in capsys.readouterr().err
