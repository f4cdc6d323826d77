"""House rules that ruff and import-linter do not check: what one module may take from another, and
where the code's references point."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bevt_core", "components", "pipelines", "tests")


def python_files() -> list[Path]:
    listed = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            *(f"{p}/*.py" for p in PACKAGES),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [REPO / line for line in listed.stdout.split() if (REPO / line).exists()]


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                private = [a.name for a in node.names if a.name.startswith("_")]
                found += [f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{name}" for name in private]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_no_code_edits_the_import_path():
    edits = [
        str(p.relative_to(REPO)) for p in python_files() if re.search(r"sys\.path\.(insert|append)", p.read_text())
    ]
    assert not edits, f"sys.path edited in {edits}: install the package instead (pip install -e .)"


def test_references_to_the_official_behaviour_resolve_in_the_repo():
    """Code cites docs/official-behaviour.md by section (§1.10, Q3); each cited section exists there."""
    headings = (REPO / "docs" / "official-behaviour.md").read_text()
    sections = set(re.findall(r"^#+ (?:§)?(\d+(?:\.\d+)?)\.? ", headings, re.M))
    sections |= set(re.findall(r"^#+ (Q\d+)\b", headings, re.M))
    cited, outside = set(), []
    for path in python_files():
        text = path.read_text()
        outside += [f"{path.relative_to(REPO)}" for _ in re.findall(r"\bspec [§Q]", text)]
        for match in re.finditer(r"official-behaviour\.md[^\n]*?((?:§\d+(?:\.\d+)?)|Q\d+)", text):
            cited.add(match.group(1).lstrip("§"))
    assert not outside, f"references to a spec outside the repository in {sorted(set(outside))}"
    assert cited, "no code cites docs/official-behaviour.md"
    assert cited <= sections, f"cited sections missing from docs/official-behaviour.md: {sorted(cited - sections)}"
