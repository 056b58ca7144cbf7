"""The documentation site builds in strict mode: a broken link, a page missing from the nav
or an API reference (mkdocstrings) that does not resolve fails the build."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parents[2]


def build(config: Path, site: Path):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_site_builds_strict(tmp_path):
    res = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "compress" / "index.html").read_text()
    assert "compress.compress" in api        # the reference is generated from the docstrings


def test_broken_link_fails_the_build(tmp_path):
    """The strict build is not vacuous: a copy of the docs with one broken link fails."""
    import shutil
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[broken](no_such_page.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
                      .replace("paths: [.]", f"paths: [{ROOT}]"))
    res = build(config, tmp_path / "site")
    assert res.returncode != 0
    assert "no_such_page.md" in res.stdout + res.stderr
