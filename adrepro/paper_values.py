"""The papers' printed numbers: ``reports/paper_values.csv`` (the source), a parser for the
tab-separated tables of ``../shared/papers/*.txt`` (to check the CSV against), recomputed means and
the mapping between dataset category names and the papers' column headers.

CSV columns (one line per printed cell, in print order, every field quoted):

- ``paper``  A | B
- ``table``  T1..T4 as printed; F6 is paper B's per-image example table in Fig. 6
- ``row``    the row's first cell without ``<sup>..</sup>``/``<b>`` markup ("本文", "1 (Baseline)", "ARAE");
             F6 rows are "<panel> <method>" ("(a) OURS")
- ``column`` the header as printed. Paper A's "logical/structural" cells are split in two columns named
             "<header> L" and "<header> S" ("早餐盒 L", "平均(L/S) S", "平均(L/S)/% L"); the row label itself
             is the cell of the first header ("比较方法", "方法", "实验", "方法" in F6)
- ``kind``   label | value (per category/class) | mean (a printed average) | flag (A's ✓ columns) | text
- ``value``  exactly as printed, spaces included ("100 ", " 99.8", "522", "98.72", "—", "✓", "")
- ``bold``   1 where printed in bold (best result), else 0
- ``ref``    the reference number printed after a row label ("[6]")
- ``numeric`` the value parsed as a number ("" when not a number)
- ``note``   printing errors and inconsistencies (../shared/papers/README.md)

A trailing header "—" with only empty cells (B Table 2's second half) is a layout artefact and is not a cell.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from statistics import fmean

from . import REPO_ROOT

CSV_PATH = REPO_ROOT / "reports" / "paper_values.csv"
PAPERS_DIR = REPO_ROOT.parent / "shared" / "papers"
PAPER_FILES = {"A": "paper_a_dual_ae.txt", "B": "paper_b_vit_fcd.txt"}
KINDS = ("label", "value", "mean", "flag", "text")
CSV_FIELDS = ("paper", "table", "row", "column", "kind", "value", "bold", "ref", "numeric", "note")

# ---- dataset category / class name  <->  printed column header, per protocol -------------------------
LOCO_COLUMNS = {
    "breakfast_box": "早餐盒",
    "juice_bottle": "果汁瓶",
    "pushpins": "图钉",
    "screw_bag": "螺丝包",
    "splicing_connectors": "连接器",
}
CIFAR10_COLUMNS = {c: c.capitalize() for c in
                   ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
CIFAR100_COLUMNS = {str(i): str(i) for i in range(20)}  # the 20 superclasses, printed "0".."19"
FMNIST_COLUMNS = {c: c for c in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                  "Sneaker", "Bag", "Ankle boot")}
MVTEC_COLUMNS = {c: c.replace("_", " ").title() for c in
                 ("bottle", "hazelnut", "capsule", "metal_nut", "leather", "pill", "wood", "carpet", "tile", "grid",
                  "cable", "transistor", "toothbrush", "screw", "zipper")}
CATEGORY_COLUMNS: dict[str, dict[str, str]] = {
    "loco": LOCO_COLUMNS, "cifar10": CIFAR10_COLUMNS, "cifar100": CIFAR100_COLUMNS,
    "fmnist": FMNIST_COLUMNS, "mvtec_ad": MVTEC_COLUMNS,
}
# which protocol each printed table reports
TABLE_PROTOCOL = {("A", "T1"): "loco", ("A", "T2"): "loco", ("A", "T3"): "loco",
                  ("B", "T1"): "cifar10", ("B", "T2"): "cifar100", ("B", "T3"): "fmnist", ("B", "T4"): "mvtec_ad"}
LS_SUFFIX = {"L": "logical", "S": "structural"}


def column_for(protocol: str, category: str) -> str:
    """Printed column header of a dataset category ("breakfast_box" -> "早餐盒", "metal_nut" -> "Metal Nut")."""
    try:
        return CATEGORY_COLUMNS[protocol][category]
    except KeyError:
        raise KeyError(f"no paper column for category '{category}' of protocol '{protocol}' "
                       f"(adrepro/paper_values.py CATEGORY_COLUMNS)") from None


def category_for(protocol: str, column: str) -> str:
    """Inverse of :func:`column_for`."""
    for cat, col in CATEGORY_COLUMNS[protocol].items():
        if col == column:
            return cat
    raise KeyError(f"column '{column}' is no category of protocol '{protocol}'")


# ---- parsing the papers' text ------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperCell:
    paper: str
    table: str
    row: str
    column: str
    kind: str
    value: str
    bold: bool = False
    ref: str = ""
    numeric: float | None = None
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.paper, self.table, self.row, self.column)


_SUP = re.compile(r"\s*<sup>(.*?)</sup>")
_BOLD = re.compile(r"^<b>(.*)</b>$", re.S)
_CAPTION_TABLE = re.compile(r"^(?:表|Table)\s*(\d+)")
_CAPTION_FIGURE = re.compile(r"^图\s*(\d+)")
_FLAG_HEADERS = {"并行双 AE", "SRM", "CRM", "双 AE+SRM+CRM", "SFM", "CSF loss"}


def parse_number(value: str) -> float | None:
    """A printed cell as a number ("100 " -> 100.0); None for "—", "✓", "" and words."""
    try:
        return float(value.strip())
    except ValueError:
        return None


def _label(cell: str) -> tuple[str, str]:
    refs = "".join(_SUP.findall(cell))
    text = _SUP.sub("", cell)
    m = _BOLD.match(text.strip())
    return (m.group(1) if m else text).strip(), refs


def _unbold(cell: str) -> tuple[str, bool]:
    m = _BOLD.match(cell)
    return (m.group(1), True) if m else (cell, False)


def _kind(header: str) -> str:
    if "平均" in header:
        return "mean"
    if header in _FLAG_HEADERS:
        return "flag"
    return "value"


def _is_ls(paper: str, header: str) -> bool:
    return paper == "A" and ("(L/S)" in header or header in LOCO_COLUMNS.values())


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Runs of consecutive tab-separated lines: (index of first line, lines)."""
    out: list[tuple[int, list[str]]] = []
    for i, line in enumerate(lines):
        if "\t" not in line:
            continue
        if out and out[-1][0] + len(out[-1][1]) == i:
            out[-1][1].append(line)
        else:
            out.append((i, [line]))
    return out


def _table_id(lines: list[str], start: int, end: int, where: str) -> str:
    for j in range(start - 1, max(start - 8, -1), -1):
        m = _CAPTION_TABLE.match(lines[j].strip())
        if m:
            return f"T{m.group(1)}"
    for j in range(end, min(end + 6, len(lines))):
        m = _CAPTION_FIGURE.match(lines[j].strip())
        if m:
            return f"F{m.group(1)}"
    raise ValueError(f"{where}:{start + 1}: tab-separated table with no '表 n' caption above or '图 n' below")


def _parse_grid(paper: str, table: str, rows: list[list[str]], where: str) -> list[PaperCell]:
    """A printed table; a line whose first cell repeats the header's first cell starts a new part."""
    cells: list[PaperCell] = []
    header: list[str] = []
    part: list[list[str]] = []
    labels: set[tuple[str, str]] = set()

    def flush() -> None:
        # drop trailing layout columns ("—" over empty cells)
        ncol = len(header)
        while ncol > 1 and header[ncol - 1].strip() == "—" and all(
                len(r) < ncol or not r[ncol - 1].strip() for r in part):
            ncol -= 1
        for r in part:
            if len(r) > ncol and any(c.strip() for c in r[ncol:]):
                raise ValueError(f"{where}: row '{r[0]}' has more cells than the header")
            row, ref = _label(r[0])
            if (row, header[0].strip()) not in labels:  # B Table 2 prints each label once per half
                labels.add((row, header[0].strip()))
                cells.append(PaperCell(paper, table, row, header[0].strip(), "label", row, False, ref))
            for h, raw in zip(header[1:ncol], r[1:ncol] + [""] * (ncol - len(r))):
                h = h.strip()
                value, bold = _unbold(raw)
                if _is_ls(paper, h):
                    halves = value.split("/") if "/" in value else [value, value]
                    if len(halves) != 2:
                        raise ValueError(f"{where}: cell '{raw}' ({row}, {h}) is not 'logical/structural'")
                    for suffix, half in zip("LS", halves):
                        cells.append(PaperCell(paper, table, row, f"{h} {suffix}", _kind(h), half, bold, "",
                                               parse_number(half)))
                else:
                    cells.append(PaperCell(paper, table, row, h, _kind(h), value, bold, "", parse_number(value)))

    for r in rows:
        if not header or r[0].strip() == header[0].strip():
            if header:
                flush()
            header, part = r, []
        else:
            part.append(r)
    flush()
    return cells


def _parse_example_table(paper: str, table: str, rows: list[list[str]], where: str) -> list[PaperCell]:
    """B Fig. 6: two panels side by side (6 columns each); the panel letters follow their rows."""
    header = [h.strip() for h in rows[0]]
    width = len(header) // 2
    if header[:width] != header[width:] or header[0] != "示例图":
        raise ValueError(f"{where}: Fig. 6 table header is not two copies of '示例图 方法 ...'")
    cells: list[PaperCell] = []
    pending: list[list[str]] = []
    for r in rows[1:]:
        r = r + [""] * (2 * width - len(r))
        if r[0].strip():  # panel labels "(a) ... (c)"
            panels = (r[0].strip(), r[width].strip())
            for side, panel in enumerate(panels):
                for pr in pending:
                    half = pr[side * width:(side + 1) * width]
                    row = f"{panel} {half[1].strip()}"
                    cells.append(PaperCell(paper, table, row, header[1], "label", half[1].strip()))
                    for h, value in zip(header[2:], half[2:]):
                        num = parse_number(value)
                        cells.append(PaperCell(paper, table, row, h, "value" if num is not None else "text", value,
                                               False, "", num))
            pending = []
        else:
            pending.append(r)
    if pending:
        raise ValueError(f"{where}: Fig. 6 rows without a panel label after them")
    return cells


def parse_paper_text(path: Path | str, paper: str | None = None) -> list[PaperCell]:
    """Every cell of every tab-separated table in one paper's text, in print order."""
    path = Path(path)
    paper = paper or {v: k for k, v in PAPER_FILES.items()}.get(path.name) or path.name.split("_")[1].upper()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[PaperCell] = []
    for start, block in _blocks(lines):
        table = _table_id(lines, start, start + len(block), str(path))
        rows = [line.split("\t") for line in block]
        where = f"{path}:{start + 1}"
        if rows[0][0].strip() == "示例图":
            out += _parse_example_table(paper, table, rows, where)
        else:
            out += _parse_grid(paper, table, rows, where)
    return out


def parse_papers(papers_dir: Path | str = PAPERS_DIR) -> list[PaperCell]:
    papers_dir = Path(papers_dir)
    out: list[PaperCell] = []
    for paper, name in PAPER_FILES.items():
        path = papers_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: paper text not found (paper {paper})")
        out += parse_paper_text(path, paper)
    return out


# ---- the CSV -------------------------------------------------------------------------------------------
def load(path: Path | str = CSV_PATH) -> list[PaperCell]:
    """Every printed cell from ``reports/paper_values.csv`` in file (print) order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: paper values file not found")
    out: list[PaperCell] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(CSV_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for i, r in enumerate(reader, start=2):
            if r["bold"] not in ("0", "1"):
                raise ValueError(f"{path}:{i}: bold must be 0 or 1, got {r['bold']!r}")
            if r["kind"] not in KINDS:
                raise ValueError(f"{path}:{i}: kind must be one of {KINDS}, got {r['kind']!r}")
            num = parse_number(r["numeric"]) if r["numeric"] else None
            if num != (parse_number(r["value"]) if r["kind"] in ("value", "mean") else None):
                raise ValueError(f"{path}:{i}: numeric {r['numeric']!r} is not the parse of value {r['value']!r}")
            out.append(PaperCell(r["paper"], r["table"], r["row"], r["column"], r["kind"], r["value"],
                                 r["bold"] == "1", r["ref"], num, r["note"]))
    keys = [c.key for c in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: duplicate (paper, table, row, column) entries")
    return out


def write(cells: list[PaperCell], path: Path | str = CSV_PATH) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for c in cells:
            num = "" if c.numeric is None else f"{c.numeric:g}"
            w.writerow([c.paper, c.table, c.row, c.column, c.kind, c.value, int(c.bold), c.ref, num, c.note])


class PaperTable:
    """One printed table: rows and columns in print order, cells by (row, column)."""

    def __init__(self, paper: str, table: str, cells: list[PaperCell]):
        self.paper, self.table = paper, table
        self.cells = {(c.row, c.column): c for c in cells}
        self.rows = list(dict.fromkeys(c.row for c in cells))
        self.label_column = next(c.column for c in cells if c.kind == "label")
        self.columns = list(dict.fromkeys(c.column for c in cells if c.kind != "label"))
        self.protocol = TABLE_PROTOCOL.get((paper, table))

    def get(self, row: str, column: str) -> PaperCell | None:
        return self.cells.get((row, column))

    def kind(self, column: str) -> str:
        return next(c.kind for (r, col), c in self.cells.items() if col == column)

    def mean_inputs(self, column: str) -> list[str]:
        """The printed columns a printed mean averages, the way the paper does.

        A T1: "平均(L/S) L|S" over the five "<category> L|S", "平均" over all ten category cells;
        A T2/T3 (no per-category cells printed): "平均/%" over "平均(L/S)/% L" and "… S";
        B: "平均值" over every class / superclass column.
        """
        values = [c for c in self.columns if self.kind(c) == "value"]
        if self.paper == "A" and column.endswith((" L", " S")):
            return [c for c in values if c.endswith(column[-2:])]
        if self.paper == "A" and not values:
            return [c for c in self.columns if self.kind(c) == "mean" and c != column]
        return values


def tables(cells: list[PaperCell] | None = None) -> dict[tuple[str, str], PaperTable]:
    cells = load() if cells is None else cells
    grouped: dict[tuple[str, str], list[PaperCell]] = {}
    for c in cells:
        grouped.setdefault((c.paper, c.table), []).append(c)
    return {k: PaperTable(*k, v) for k, v in grouped.items()}


def round_half_up(x: float, decimals: int) -> float:
    return float(Decimal(repr(x)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def decimals(value: str) -> int:
    v = value.strip()
    return len(v.split(".")[1]) if "." in v else 0


@dataclass(frozen=True)
class RecomputedMean:
    printed: str
    printed_value: float
    recomputed: float  # full precision
    inputs: tuple[str, ...]
    tolerance: float  # rounding error of the printed mean plus that of its inputs

    @property
    def rounded(self) -> float:
        """Recomputed mean rounded (half up) to the printed precision."""
        return round_half_up(self.recomputed, decimals(self.printed))

    @property
    def shown(self) -> str:
        """The recomputed mean for display: the printed precision, at least one decimal ("70.1")."""
        d = max(decimals(self.printed), 1)
        return f"{round_half_up(self.recomputed, d):.{d}f}"

    @property
    def status(self) -> str:
        """'ok' | 'rounding' (within rounding error, but not the half-up rounding) | 'mismatch'."""
        if abs(self.recomputed - self.printed_value) > self.tolerance + 1e-9:
            return "mismatch"
        return "ok" if self.rounded == self.printed_value else "rounding"


def recomputed_mean(table: PaperTable, row: str, column: str) -> RecomputedMean | None:
    """Recompute a printed mean from the row's printed cells; None when the inputs are not all numbers."""
    cell = table.get(row, column)
    if cell is None or cell.kind != "mean" or cell.numeric is None:
        return None
    inputs = table.mean_inputs(column)
    vals = [table.get(row, c) for c in inputs]
    if not inputs or any(v is None or v.numeric is None for v in vals):
        return None
    tol = 0.5 * 10 ** -decimals(cell.value) + max(0.5 * 10 ** -decimals(v.value) for v in vals)
    return RecomputedMean(cell.value, cell.numeric, fmean(v.numeric for v in vals), tuple(inputs), tol)
