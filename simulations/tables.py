"""Result tables the benchmarks print twice: as rich tables while they run, then as markdown."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
if not console.is_terminal:
    console.width = max(console.width, 180)  # piped to a file: keep the tables whole


@dataclass
class Section:
    """One result table, kept to print again as markdown at the end."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str]


def show(section: Section) -> None:
    table = Table(*section.headers, title=section.title)
    for row in section.rows:
        table.add_row(*row)
    console.print(table)
    for note in section.notes:
        console.print(f"[dim]{note}[/]")


def to_markdown(section: Section) -> str:
    lines = [f"**{section.title}**", "", "| " + " | ".join(section.headers) + " |"]
    lines.append("|" + "|".join("---" for _ in section.headers) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in section.rows]
    lines += [""] + [f"- {note}" for note in section.notes]
    return "\n".join(lines)
