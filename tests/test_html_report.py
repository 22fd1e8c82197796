"""reports/index.html in a real headless browser (Debian's chromium + chromium-driver, Selenium; no network).

The report is rendered from the committed result files, and from a small tree that adds a synthetic `paper` profile
to the smoke results (paper A's baseline and full method on every LOCO category, two seeds, with latency). The number of charts
expected is computed from those result files and the registry, independently of adrepro/figures.py's drawing
code. Every image must decode (naturalWidth > 0), the page must reference nothing outside itself, and the browser
console must show no SEVERE entry. A 1366x900 screenshot is saved beside the test output; the committed results'
one also to the path in $ADREPRO_SCREENSHOT (docs/report_screenshot.png).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from adrepro import REPO_ROOT, figures, report
from adrepro import paper_values as pv
from adrepro import results as results_mod
from adrepro.registry import VARIANTS

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LOCO = ["breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"]
TEACHER = {"id": "pdn_s", "paper_teacher": True}
DATA = {"source": "mvtec_loco", "protocol": "loco", "official": True}


def _results_tree(root: Path) -> None:
    shutil.copytree(REPO_ROOT / "results" / "smoke", root / "smoke",
                    ignore=shutil.ignore_patterns("scores.csv.gz"))
    latency = {}
    for variant, base in (("a-t2-e1", 0.80), ("a-t3-e11", 0.84)):
        for seed in (0, 1):
            for k, cat in enumerate(LOCO):
                exp = f"{variant}-loco-{cat}-s{seed}"
                lo, st = base + 0.02 * k - 0.01 * seed, base + 0.1 - 0.01 * k
                m = {"experiment": exp, "variant": variant, "paper": "A", "method": "efficientad", "profile": "paper",
                     "protocol": "loco", "dataset": "mvtec_loco", "category": cat, "seed": seed, "status": "ok",
                     "git_sha": "0123456789abcdef", "steps": 70000, "teacher": TEACHER, "data": DATA,
                     "auroc": {"image": None, "logical": lo, "structural": st, "mean_ls": (lo + st) / 2,
                               "pixel": None}}
                (root / "paper" / exp).mkdir(parents=True)
                (root / "paper" / exp / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
                latency[exp] = {"latency_ms": 2.0 if variant == "a-t2-e1" else 3.1, "device": "NVIDIA H100",
                                "dtype": "fp16-autocast", "batch": 1, "throughput_img_s": 400.0}
    (root / "paper" / "latency.json").write_text(json.dumps(latency), encoding="utf-8")


def expected_charts(all_results: dict[str, dict[str, dict]]) -> int:
    """Charts the report must show, from the result files: a paper-vs-reproduced chart per printed table one of
    whose variants has a result in a comparable profile on the table's protocol; an ablation chart per ablation,
    protocol and profile with >= 2 of its variants run; a latency chart per paper and profile with timings."""
    tables = pv.tables(pv.load())
    ran: dict[tuple[str, str], set[str]] = {}  # (profile, protocol) -> variants with a number
    for profile, metrics in all_results.items():
        for m in metrics.values():  # the profile's runs decide LOCO's key (logical alone without a structural split)
            key = figures.metric_key(str(m.get("protocol")), metrics.values())
            if m.get("status") == "ok" and report._metric(m, key) is not None:
                ran.setdefault((profile, m["protocol"]), set()).add(m["variant"])
    n = 0
    for (paper, table), t in tables.items():
        variants = {v.id for v in VARIANTS if v.paper == paper for c in v.cells if c.table == table}
        n += table.startswith("T") and any(variants & ran.get((p, t.protocol), set())
                                           for p in report.COMPARABLE_PROFILES)
    for paper, table in figures.ABLATIONS:
        variants = {v.id for v in VARIANTS if v.paper == paper for c in v.cells if c.table == table}
        n += sum(len(variants & done) >= 2 for done in ran.values())
    for profile in all_results:
        lat_file = results_mod.RESULTS_DIR / profile / "latency.json"
        timed = json.loads(lat_file.read_text()) if lat_file.is_file() else {}
        n += len({m["paper"] for e, m in all_results[profile].items() if e in timed and m.get("status") == "ok"
                  and report._metric(m, figures.metric_key(str(m.get("protocol")), all_results[profile].values()))
                  is not None})
    return n


def _render(tmp_path_factory, root: Path) -> tuple[Path, int]:
    mp = pytest.MonkeyPatch()
    mp.setattr(results_mod, "RESULTS_DIR", root)
    out = tmp_path_factory.mktemp("reports")
    try:
        report.render(out)
        expected = expected_charts(results_mod.load_all())
    finally:
        mp.undo()
    return out, expected


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Smoke results + a synthetic comparable profile (exercises every kind of chart)."""
    root = tmp_path_factory.mktemp("results")
    _results_tree(root)
    return _render(tmp_path_factory, root)


@pytest.fixture(scope="module", params=["synthetic", "committed"])
def any_rendered(request, tmp_path_factory, rendered):
    """Also the committed result files as they are (the docs screenshot shows only real results)."""
    if request.param == "synthetic":
        return request.param, rendered
    return request.param, _render(tmp_path_factory, REPO_ROOT / "results")


def test_report_is_self_contained_and_markdown_links_the_same_charts(rendered):
    out, expected = rendered
    html = (out / "index.html").read_text(encoding="utf-8")
    assert expected >= 12  # 3 paper-vs-reproduced (A T1-T3), ablations (paper T3; smoke), 3 latency charts
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert len(srcs) == expected and all(s.startswith("data:image/png;base64,") for s in srcs)
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert all(r.startswith(("data:", "#")) for r in refs), [r for r in refs if not r.startswith(("data:", "#"))]
    linked = [m for name in ("paper_a.md", "paper_b.md")
              for m in re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", (out / name).read_text(encoding="utf-8"))]
    assert len(linked) == expected and sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(
        Path(p).name for p in linked)
    assert 'title="paper: a-t2-e1-loco-breakfast_box-s0' in html  # provenance tooltip of a reproduced cell
    assert "Table 3: paper vs reproduced" in html and "verdict" in html


def _driver(tmp_path: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip install -c constraints.txt -e '.[browser]')")
    if missing:
        pytest.skip(f"browser test needs Debian's chromium + chromium-driver and Selenium; missing: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1366,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def test_report_in_headless_chromium(any_rendered, tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download drivers or browsers
    tree, (out, expected) = any_rendered
    driver = _driver(tmp_path)
    try:
        driver.set_window_size(1366, 900)
        driver.get((out / "index.html").as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        assert driver.title.startswith("adrepro")
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(widths) == expected
        assert all(c and w > 0 and h > 0 for c, w, h in widths), widths
        remote = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                       ".filter(n => !n.startsWith('data:') && !n.startsWith('file:'))")
        assert remote == []
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == []
        if tree == "synthetic":
            tooltip = driver.execute_script("return document.querySelector('td.prov').title")
            assert tooltip.startswith("paper: a-t2-e1-loco-")
        shot = tmp_path / "report_screenshot.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        if tree == "committed" and os.environ.get("ADREPRO_SCREENSHOT"):
            dest = Path(os.environ["ADREPRO_SCREENSHOT"])
            dest = dest if dest.is_absolute() else REPO_ROOT / dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, dest)
    finally:
        driver.quit()
