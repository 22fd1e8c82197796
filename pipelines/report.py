"""Stage `report`: render reports/paper_a.md and reports/paper_b.md from every profile's result files."""

from __future__ import annotations

from typing import Any

from adrepro.report import render


def main(args: Any) -> None:
    for path in render():
        print(f"[report] wrote {path}")
