"""The README and the pages under docs/ stay usable: every relative link and anchor resolves, and
every `chargen` command they show names a real subcommand and real options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from chargen.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "corpora" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: {broken}"


def test_the_link_check_sees_links_and_anchors() -> None:
    assert {"docs/USAGE.md", "docs/PERFORMANCE.md"} <= set(relative_links(ROOT / "README.md"))
    assert "performance" in anchors(ROOT / "README.md")


def shown_commands(page: Path) -> list[list[str]]:
    """The arguments of each `chargen` command in the page's bash blocks (directly, after a pipe,
    or under `torchrun -m`), continuation lines joined."""
    commands = []
    for block in FENCE.findall(page.read_text(encoding="utf-8")):
        if not block.startswith("```bash"):
            continue
        for line in re.sub(r"\\\n\s*", " ", block).splitlines()[1:-1]:
            words = shlex.split(line.split("| ")[-1], comments=True)
            if words[:1] == ["chargen"] or (words[:1] == ["torchrun"] and "chargen" in words):
                commands.append(words[words.index("chargen") + 1 :])
    return commands


def unknown_options(words: list[str]) -> list[str]:
    """The options in a `chargen` command line that its subcommand does not have."""
    command = typer.main.get_command(app)
    words = list(words)
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    if hasattr(command, "commands"):
        return [f"no subcommand in {words}"]
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    return [w for w in words if w.startswith("-") and w != "-" and w.split("=")[0] not in known]


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "docs" / "USAGE.md"], ids=lambda p: p.name)
def test_shown_commands_exist(page: Path) -> None:
    commands = shown_commands(page)
    assert len(commands) > 10
    wrong = {" ".join(c): bad for c in commands if (bad := unknown_options(c))}
    assert not wrong


def test_the_command_check_finds_a_wrong_option() -> None:
    assert unknown_options(["train", "corpus.txt", "--max-tim", "3m"]) == ["--max-tim"]
    assert unknown_options(["cache", "list"]) == []
    assert unknown_options(["classify", "predict", "m.clf", "--file", "-"]) == []


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
