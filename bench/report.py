"""What every benchmark does with its figures: a two-column table, and a section of
bench/results/latest.json (``make bench`` writes the whole file; a module run alone with
``--save`` replaces its own section)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def print_figures(figures: dict[str, Any]) -> None:
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")


def save_section(name: str, figures: Any) -> None:
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved[name] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")


def report(name: str, figures: dict[str, Any], *, as_json: bool, save: bool) -> None:
    """A module run alone: its figures as JSON or a table; with ``save``, its section too."""
    if save:
        save_section(name, figures)
    if as_json:
        print(json.dumps(figures, indent=2))
    else:
        print_figures(figures)
