"""reports/paper_values.csv against the papers' text: every tab-separated line rebuilt exactly from the CSV."""

from __future__ import annotations

import re

import pytest

from adrepro import paper_values as pv
from adrepro.config import load_params
from adrepro.registry import VARIANTS

PAPERS = pv.PAPERS_DIR
needs_papers = pytest.mark.skipif(not (PAPERS / pv.PAPER_FILES["A"]).is_file(),
                                  reason=f"{PAPERS}: paper texts not present in this checkout")
# the tab-separated blocks of each paper, in print order
EXPECTED_BLOCKS = {"A": ["T1", "T2", "T3"], "B": ["T1", "T2", "T3", "T4", "F6"]}


@pytest.fixture(scope="module")
def cells():
    return pv.load()


@pytest.fixture(scope="module")
def by_key(cells):
    return {c.key: c for c in cells}


@pytest.fixture(scope="module")
def tabs(cells):
    return pv.tables(cells)


def _raw_blocks(paper):
    """Consecutive tab-separated lines of a paper's text (independent of the module's parser)."""
    lines = (PAPERS / pv.PAPER_FILES[paper]).read_text(encoding="utf-8").splitlines()
    blocks, prev = [], None
    for i, line in enumerate(lines):
        if "\t" in line:
            if prev == i - 1:
                blocks[-1].append(line)
            else:
                blocks.append([line])
            prev = i
    return blocks


def _printed(c: pv.PaperCell) -> str:
    return f"<b>{c.value}</b>" if c.bold else c.value


def _rebuild_grid_line(paper, table, header, raw_label, by_key):
    """A printed data line rebuilt from the CSV (label with its <sup> ref, <b> markup, A's "L/S" cells)."""
    label = re.sub(r"\s*<sup>.*?</sup>", "", raw_label).strip()
    lab = by_key[(paper, table, label, header[0])]
    out = [f"{lab.value} <sup>{lab.ref}</sup>" if lab.ref else lab.value]
    for h in header[1:]:
        if h == "—":  # B Table 2's empty layout column
            out.append("")
        elif (paper, table, label, f"{h} L") in by_key:
            lo, so = by_key[(paper, table, label, f"{h} L")], by_key[(paper, table, label, f"{h} S")]
            out.append(_printed(lo) if lo.value == so.value == "—" else f"{_printed(lo)}/{_printed(so)}")
        else:
            out.append(_printed(by_key[(paper, table, label, h)]))
    return out


@needs_papers
@pytest.mark.parametrize("paper", ["A", "B"])
def test_every_tab_line_is_rebuilt_exactly_from_the_csv(paper, by_key, cells):
    blocks = _raw_blocks(paper)
    assert len(blocks) == len(EXPECTED_BLOCKS[paper])
    checked = used = 0
    for table, block in zip(EXPECTED_BLOCKS[paper], blocks):
        rows = [line.split("\t") for line in block]
        if table == "F6":
            header, width, pending = rows[0], len(rows[0]) // 2, []
            for r in rows[1:]:
                if not r[0]:
                    pending.append(r)
                    continue
                for side in (0, 1):
                    panel = r[side * width]
                    for pr in pending:
                        half = pr[side * width:(side + 1) * width]
                        row = f"{panel} {half[1]}"
                        rebuilt = ["", by_key[(paper, table, row, header[1])].value] + [
                            by_key[(paper, table, row, h)].value for h in header[2:width]]
                        assert rebuilt == half, (table, row)
                        used += width - 2  # the label is not counted
                checked += len(pending) + 1
                pending = []
            checked += 1
            continue
        header = None
        for r in rows:
            checked += 1
            if header is None or r[0] == header[0]:
                header = r
                cols = {c.column for c in cells if (c.paper, c.table) == (paper, table)}
                for h in r[1:]:
                    assert h == "—" or h in cols or {f"{h} L", f"{h} S"} <= cols, (table, h)
                continue
            rebuilt = _rebuild_grid_line(paper, table, header, r[0], by_key)
            assert [x if i else re.sub(r"\s+<sup>", " <sup>", x) for i, x in enumerate(r)] == rebuilt, (table, r[0])
            used += sum(1 for h in header[1:] if h != "—") + sum(1 for h in header[1:] if f"{h} S" in cols)
    lines = sum(len(b) for b in blocks)
    assert checked == lines
    # the CSV holds nothing the text does not print
    n_csv = sum(1 for c in cells if c.paper == paper and c.kind != "label")
    assert n_csv == used


@needs_papers
def test_module_parser_agrees_with_the_csv(cells):
    parsed = pv.parse_papers()
    strip = [(c.key, c.kind, c.value, c.bold, c.ref, c.numeric) for c in cells]
    assert [(c.key, c.kind, c.value, c.bold, c.ref, c.numeric) for c in parsed] == strip


def test_values_are_kept_exactly_as_printed(by_key):
    assert by_key[("A", "T1", "GCAD", "果汁瓶 L")].value == "100 "
    assert by_key[("A", "T1", "本文", "图钉 S")].value == " 95.6"
    assert by_key[("A", "T1", "本文", "平均(L/S) L")].value == "89.4 "
    assert by_key[("A", "T2", "2", "SRM")].value == "✓" and by_key[("A", "T2", "2", "CRM")].value == ""
    assert by_key[("B", "T4", "AnoGAN", "Leather")].value == "522"
    assert by_key[("B", "T3", "本文方法", "Sneaker")].value == "98.72"
    assert by_key[("B", "T1", "GeoTrans", "Frog")].value == "82"
    b = by_key[("B", "T1", "本文方法", "平均值")]
    assert (b.value, b.bold, b.numeric) == ("96.3", True, 96.3)
    assert by_key[("B", "T1", "ARAE", "比较方法")].ref == "[6]"
    assert by_key[("B", "T2", "本文方法", "平均值")].value == "88.9"
    assert by_key[("B", "F6", "(c) OURS", "异常分数")].value == "8.20"
    assert by_key[("B", "F6", "(d) ResNet+ $L_{anchor}$", "真实标签")].value == "正常"


def test_printing_errors_are_flagged(by_key, tabs):
    note = lambda *k: by_key[k].note  # noqa: E731
    assert "522" in note("B", "T4", "AnoGAN", "Leather") and "52" in note("B", "T4", "AnoGAN", "Leather")
    assert "70.1" in note("B", "T4", "DSVDD", "平均值")
    assert "63.2" in note("B", "T1", "CapsNetpp", "平均值")
    assert "identical" in note("B", "T1", "LSA", "比较方法") and "identical" in note("B", "T1", "DROCC", "比较方法")
    assert "two decimals" in note("B", "T3", "本文方法", "Sneaker")
    assert "6,000" in note("B", "T3", "本文方法", "比较方法")
    assert "AE-L2" in note("B", "T4", "AE-12", "比较方法") and "CAVGA-Du" in note("B", "T4", "CAVAG-du", "比较方法")
    for row in ("AVID", "AE-ssim", "AE-12", "CAVAG-du", "DSVDD"):
        assert "integer" in note("B", "T4", row, "比较方法")
    assert "truncated" in note("A", "T1", "本文", "平均") and "92.17" in note("A", "T1", "本文", "平均")
    assert "means only" in note("A", "T1", "DSKD", "方法")
    assert "85.8/94.1" in note("A", "T1", "EfficientAD", "方法") and "86.8/94.7" in note("A", "T1", "EfficientAD", "方法")
    assert "ARAFD" in note("B", "T3", "ARAFD", "比较方法")
    # the identical rows really are identical
    t1 = tabs[("B", "T1")]
    assert [t1.get("LSA", c).value for c in t1.columns] == [t1.get("DROCC", c).value for c in t1.columns]


def test_recomputed_means(tabs):
    def m(paper, table, row, col):
        return pv.recomputed_mean(tabs[(paper, table)], row, col)

    assert (m("B", "T4", "DSVDD", "平均值").shown, m("B", "T4", "DSVDD", "平均值").status) == ("70.1", "mismatch")
    assert (m("B", "T1", "CapsNetpp", "平均值").shown, m("B", "T1", "CapsNetpp", "平均值").status) == ("63.2", "mismatch")
    assert m("A", "T1", "SPADE", "平均(L/S) L").shown == "71.0" and m("A", "T1", "SPADE", "平均(L/S) S").shown == "66.9"
    assert m("A", "T1", "STPM", "平均(L/S) L").status == "ok" and m("A", "T1", "STPM", "平均(L/S) S").shown == "83.4"
    ours = m("A", "T1", "本文", "平均")
    assert ours.recomputed == pytest.approx(92.17) and ours.status == "rounding" and ours.printed == "92.1"
    assert m("A", "T1", "本文", "平均(L/S) L").inputs == tuple(f"{h} L" for h in pv.LOCO_COLUMNS.values())
    assert m("B", "T2", "本文方法", "平均值").inputs == tuple(str(i) for i in range(20))
    assert m("B", "T2", "本文方法", "平均值").status == "ok"
    assert m("A", "T2", "5", "平均/%").recomputed == pytest.approx(91.25) and m("A", "T2", "5", "平均/%").status == "ok"
    assert m("A", "T1", "DSKD", "平均") is None  # per-category cells are "—"
    # the only printed means that miss their row by more than rounding are the flagged ones
    mismatches = {(p, t, r, c) for (p, t), tab in tabs.items() for r in tab.rows for c in tab.columns
                  if (x := pv.recomputed_mean(tab, r, c)) and x.status == "mismatch"}
    assert mismatches == {
        ("A", "T1", "SPADE", "平均(L/S) L"), ("A", "T1", "SPADE", "平均(L/S) S"), ("A", "T1", "SPADE", "平均"),
        ("A", "T1", "STPM", "平均(L/S) S"), ("A", "T1", "STPM", "平均"), ("B", "T1", "CapsNetpp", "平均值"),
        ("B", "T4", "AnoGAN", "平均值"), ("B", "T4", "DSVDD", "平均值")}


def test_recomputed_mean_on_a_hand_made_table():
    mk = lambda col, kind, v: pv.PaperCell("B", "T9", "x", col, kind, v, numeric=pv.parse_number(v))  # noqa: E731
    t = pv.PaperTable("B", "T9", [pv.PaperCell("B", "T9", "x", "m", "label", "x"), mk("a", "value", "1.0"),
                                  mk("b", "value", "2.0"), mk("c", "value", "4.5"), mk("平均值", "mean", "2.4")])
    r = pv.recomputed_mean(t, "x", "平均值")
    assert r.recomputed == pytest.approx(2.5) and r.tolerance == pytest.approx(0.1)
    assert r.status == "rounding" and r.rounded == 2.5  # 2.5 vs 2.4: inside the rounding error of the inputs
    for printed, status in (("2.5", "ok"), ("2.3", "mismatch"), ("2.7", "mismatch"), ("2.6", "rounding")):
        t.cells[("x", "平均值")] = mk("平均值", "mean", printed)
        assert pv.recomputed_mean(t, "x", "平均值").status == status, printed
    assert pv.round_half_up(91.25, 1) == 91.3 and pv.round_half_up(70.0666, 1) == 70.1


def test_registry_cells_exist_in_the_csv(tabs):
    for v in VARIANTS:
        for cell in v.cells:
            if cell.table.startswith("T"):
                assert cell.row in tabs[(v.paper, cell.table)].rows, (v.id, cell)


def test_registry_options_match_the_printed_check_marks(tabs):
    flags = {"并行双 AE": ("dual_ae",), "SRM": ("srm",), "CRM": ("crm",), "双 AE+SRM+CRM": ("dual_ae", "srm", "crm"),
             "SFM": ("sfm",), "CSF loss": ("csf",)}
    seen = 0
    for v in VARIANTS:
        for cell in v.cells:
            if v.paper == "A" and cell.table in ("T2", "T3"):
                t = tabs[("A", cell.table)]
                for col in t.columns:
                    if t.kind(col) == "flag":
                        assert (t.get(cell.row, col).value == "✓") == all(v.options[o] for o in flags[col]), (v.id, col)
                        seen += 1
    assert seen == 3 * (7 + 6)


def test_category_mapping_covers_the_paper_profile(tabs):
    params = load_params()
    protos = params["profiles"]["paper"]["protocols"]
    for (paper, table), t in tabs.items():
        if t.protocol is None:
            continue
        values = [c for c in t.columns if t.kind(c) == "value"]
        if paper == "A" and not values:
            continue
        headers = list(dict.fromkeys(c[:-2] if paper == "A" else c for c in values))
        cats = [str(c) for c in protos[t.protocol]["categories"]]
        assert [pv.column_for(t.protocol, c) for c in cats] == headers, (paper, table)
        assert [pv.category_for(t.protocol, h) for h in headers] == cats
    with pytest.raises(KeyError, match="CATEGORY_COLUMNS"):
        pv.column_for("mvtec_ad", "tiles")


def test_load_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "pv.csv"
    bad.write_text('"paper","table","row","column","kind","value","bold","ref","numeric","note"\n'
                   '"B","T1","x","Cat","value","92.8","0","","29.8",""\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pv\.csv:2: numeric"):
        pv.load(bad)
    with pytest.raises(FileNotFoundError, match="paper values file"):
        pv.load(tmp_path / "missing.csv")
