"""The pages are rendered from the package's templates (report/templates/, Jinja2, autoescape on): every value a
user gave (label names, the run's folder) is shown as text, never read as markup, on report.html and compare.html;
the explorer's JSON keeps the names exactly; the style and scripts are inlined (one file, no reference out).

A small model on random data with hostile label names goes through ``filterlens.analyze``, ``Analysis.save``,
``build_report`` and ``build_compare``."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch
import torch.nn as nn

NAMES = ['<b>&"', "<i>x</i>", "a'b"]
FOLDER = 'run <b>&"'


class _Page(HTMLParser):
    """The elements of a page (tags), its visible text and its scripts' text by id."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.scripts, self._in = [], [], {}, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("script", "style"):
            self._in = (tag, dict(attrs).get("id"))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._in = None

    def handle_data(self, data):
        if self._in is None:
            self.text.append(data)
        elif self._in[0] == "script":
            self.scripts[self._in[1]] = self.scripts.get(self._in[1], "") + data


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    import filterlens
    from filterlens.report import build_compare, build_report

    base = tmp_path_factory.mktemp("pages")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3))
    x, y = torch.randn(60, 3, 8, 8), torch.arange(60) % 3
    a = filterlens.analyze(model, (x, y), (x, y), labels=NAMES, probe_epochs=1, heatmaps="none", bootstrap=0,
                           top_images=2, progress=False, seed=0)
    run = base / FOLDER
    a.save(run)
    report = build_report(run).read_text()
    compare = build_compare([run], base / "cmp").read_text()
    return report, compare


def test_label_names_are_escaped_on_the_report(pages):
    html, _ = pages
    for name in NAMES[:2]:
        assert name not in html  # not as markup, not even inside the explorer's JSON
    assert "&lt;b&gt;&amp;" in html and "&lt;i&gt;x&lt;/i&gt;" in html  # the Data table's label_names
    page = _Page(html)
    assert "b" not in page.tags and "i" not in page.tags
    text = " ".join(page.text)
    assert json.dumps(NAMES) in text  # shown as the user wrote them
    assert json.loads(page.scripts["fl-data"])["labels"] == NAMES  # the explorer reads them back exactly


def test_run_folder_is_escaped_on_compare(pages):
    _, html = pages
    assert FOLDER not in html and "run &lt;b&gt;&amp;" in html
    page = _Page(html)
    assert "b" not in page.tags
    assert FOLDER in " ".join(page.text)


def test_pages_inline_their_style_and_scripts(pages):
    from importlib import resources

    templates = resources.files("filterlens.report") / "templates"
    for html, assets in zip(pages, (("page.css", "explorer.css", "images-loaded.js", "explorer.js"),
                                    ("page.css", "images-loaded.js"))):
        for name in assets:
            assert (templates / name).read_text().strip() in html, name
        assert "<link" not in html and "<script src" not in html and "@import" not in html
        assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
