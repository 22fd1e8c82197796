"""What each reproduced number rests on, as one line of text per field: teacher (paper's or substitute), data
(official or not), scale, penalty images, kd_cnn preset, code commit and the result files (reports and claims)."""

from __future__ import annotations

from typing import Any

from .scores import scale_text


def teacher_text(m: dict[str, Any]) -> str:
    t = m.get("teacher") or {}
    tid = t.get("id") or "?"
    if t.get("paper_teacher") is False:
        why = t.get("substitute_reason")
        return f"{tid} ⚠ not the paper's teacher" + (f" ({why})" if why else "")
    if t.get("paper_teacher") is None:
        return f"{tid} (paper teacher: unknown)"
    return tid


def data_text(m: dict[str, Any]) -> str:
    d = m.get("data") or {}
    src = d.get("source") or m.get("dataset") or "?"
    proto = d.get("protocol") or m.get("protocol") or "?"
    flag = " ⚠ non-official data" if d.get("official") is False else ""
    return f"{src} / {proto}{flag}"


def short_sha(m: dict[str, Any]) -> str:
    sha = str(m.get("git_sha") or "?")
    base, _, dirty = sha.partition("-")
    return base[:10] + (f"-{dirty}" if dirty else "")


def penalty_text(m: dict[str, Any]) -> str:
    """EfficientAD's penalty images (train summary ``penalty_source`` / ``penalty``); "" for other families."""
    t = m.get("train") or {}
    src = t.get("penalty_source")
    if isinstance(src, dict):
        what = src.get("source") or src.get("reason") or src.get("kind") or "?"
        flag = " ⚠ substitute" if src.get("substitute") else ""
        return f"{src.get('kind', '?')}: {what}{flag}" + (f" ({t['penalty']})" if t.get("penalty") else "")
    return str(t.get("penalty") or "")


def preset_text(m: dict[str, Any]) -> str:
    t = m.get("train") or {}
    return str(t.get("preset") or "") if m.get("method") == "kd_cnn" else ""


def join(values: list[str]) -> str:
    return "; ".join(dict.fromkeys(v for v in values if v))


def provenance(sources: list[dict[str, Any]]) -> dict[str, str]:
    """The provenance fields of a set of result files (distinct values joined)."""
    s = sources
    return {
        "experiments": join([m.get("experiment", "?") for m in s]),
        "seeds": join([str(m.get("seed")) for m in s]),
        "teacher": join([teacher_text(m) for m in s]),
        "data": join([data_text(m) for m in s]),
        "steps": join([str(m.get("steps")) for m in s if m.get("steps") is not None]),
        "scale": join([scale_text(m["scale"]) for m in s if m.get("scale")]),
        "penalty": join([penalty_text(m) for m in s]),
        "preset": join([preset_text(m) for m in s]),
        "git_sha": join([short_sha(m) for m in s]),
    }


def sources_text(sources: list[dict[str, Any]], profile: str) -> str:
    ids = sorted(dict.fromkeys(m.get("experiment", "?") for m in sources))
    shown = ", ".join(ids[:4]) + (f", … ({len(ids)} result files)" if len(ids) > 4 else "")
    return f"results/{profile}/: {shown}" if ids else ""


def code_commits(paper: str, all_results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, str]]:
    """Each profile's code commit(s) (results' ``git_sha``) with how many of this paper's results each produced."""
    out = []
    for profile, metrics in all_results.items():
        counts: dict[str, int] = {}
        for m in metrics.values():
            if m.get("paper") == paper:
                counts[short_sha(m)] = counts.get(short_sha(m), 0) + 1
        if counts:
            out.append({"profile": profile, "commits": ", ".join(f"`{k}` ({n})" for k, n in counts.items())})
    return out
