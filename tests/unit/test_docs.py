"""The documentation keeps up with the code: every metric, check, setting and link."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from sphinx.pycode import ModuleAnalyzer

import container_manager
from container_manager.conf import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.rglob("*.md")])
PAGES = [p for p in PAGES if "_build" not in p.parts]


def _text(relative: str) -> str:
    return (ROOT / relative).read_text()


def test_the_version_is_the_changelogs_newest_release() -> None:
    releases = re.findall(r"^## (\d+\.\d+\.\d+) - \d{4}-\d{2}-\d{2}$", _text("CHANGELOG.md"), re.M)
    assert releases, "CHANGELOG.md names no release"
    assert releases[0] == container_manager.__version__
    assert 'attr = "container_manager.__version__"' in _text("pyproject.toml")


def test_every_metric_is_in_the_metrics_reference() -> None:
    source = _text("container_manager/metrics.py")
    names = {n for n in re.findall(r'"(container_jobs_[a-z_]+)"', source) if "_metrics_" not in n}
    assert len(names) > 10
    reference = _text("docs/reference/metrics.md")
    assert sorted(n for n in names if n not in reference) == []


def test_every_system_check_is_in_the_errors_reference() -> None:
    checks = _text("container_manager/checks.py")
    ids = set(re.findall(r'id="(container_manager\.[EW]\d{3})"', checks))
    assert len(ids) >= 8
    reference = _text("docs/reference/errors.md")
    assert sorted(i for i in ids if f"`{i}`" not in reference) == []


def test_every_setting_has_the_comment_its_reference_entry_is_made_of() -> None:
    docs = ModuleAnalyzer.for_module("container_manager.conf").find_attr_docs()
    assert [f.name for f in dataclasses.fields(Settings) if ("Settings", f.name) not in docs] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_point_at_files_that_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    missing = []
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert missing == []
