"""`adrepro profile new NAME --from PROFILE [--data FOLDER]`: a user profile appended to params.yaml as text.

The source profile's block is copied line for line (comments and layout of the rest of the file untouched) under
the new name. With ``--data`` the folder is declared as ``datasets.custom.NAME: {layout, path}`` and the copy's
``protocols`` become that one dataset (every category found in it; the variants listed, or every variant
registered for the layout's protocol, paper A's included on MVTec AD). The edited text must parse to exactly the
old parameters plus the new entries, and validate, before it is written.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import yaml

from .config import PARAMS_FILE, ConfigError, resolve_path, validate
from .schema import LAYOUT_PROTOCOL

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#][^:]*):(?P<rest>.*)$")
RESERVED = {"new"}  # `adrepro profile new ...` is the command


def _key(line: str, indent: int) -> str | None:
    m = _KEY.match(line)
    return m["key"].strip() if m and len(m["indent"]) == indent else None


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the block opened by ``lines[start]``: the next key at ``indent`` or less (trailing blank and
    comment lines belong to what follows)."""
    end = start + 1
    for i in range(start + 1, len(lines)):
        m = _KEY.match(lines[i])
        if m and len(m["indent"]) <= indent:
            break
        if lines[i].strip() and not lines[i].lstrip().startswith("#"):
            end = i + 1
    return end


def _top(lines: list[str], key: str) -> int | None:
    return next((i for i, ln in enumerate(lines) if _key(ln, 0) == key), None)


def detect_layout(root: Path) -> str:
    """mvtec_loco when the categories have validation/good and LOCO's two test kinds, else mvtec_ad."""
    from .datasets import mvtec
    from .datasets.registry import _layout_root

    root = _layout_root(root)
    cats = mvtec.categories(root)
    loco = cats and all((root / c / "validation").is_dir() and (root / c / "test" / "logical_anomalies").is_dir()
                        for c in cats)
    return "mvtec_loco" if loco else "mvtec_ad"


def _protocol_block(name: str, layout: str, data: str, categories: list[str], seeds: list[int],
                    variants: list[str]) -> list[str]:
    proto = LAYOUT_PROTOCOL[layout]
    spec = {"dataset": name, "categories": categories, "seeds": seeds}
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.items())
    listed = ", ".join(f"{v}: null" for v in variants)
    return [f"    protocols:                        # datasets.custom.{name}: {data}\n",
            f"      {proto}:\n", f"        {{{body},\n", f"         variants: {{{listed}}}}}\n"]


def new_profile_text(text: str, name: str, source: str, data: str | None = None, layout: str | None = None,
                     variants: list[str] | None = None) -> str:
    """params.yaml ``text`` with profile ``name`` added (a copy of ``source``; see the module doc)."""
    from .registry import VARIANTS, VARIANTS_BY_ID

    params = yaml.safe_load(text)
    profiles = params["profiles"]
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or name in RESERVED:
        raise ConfigError(f"profile name '{name}': use letters, digits, '_', '-', '.' (and not {sorted(RESERVED)})")
    if name in profiles:
        raise ConfigError(f"{PARAMS_FILE}: profile '{name}' exists already")
    if source not in profiles:
        raise ConfigError(f"{PARAMS_FILE}: no profile '{source}' to copy; known: {', '.join(profiles)}")
    lines = text.splitlines(keepends=True)
    top = _top(lines, "profiles")
    if top is None or lines[top].split(":", 1)[1].split("#")[0].strip():
        raise ConfigError(f"{PARAMS_FILE}: 'profiles:' must be a block mapping (one profile per indented key)")
    end_all = _block_end(lines, top, 0)
    start = next(i for i in range(top + 1, end_all) if _key(lines[i], 2) == source)
    block = lines[start:_block_end(lines, start, 2)]
    block[0] = block[0].replace(f"  {source}:", f"  {name}:", 1)
    want = copy.deepcopy(params)
    want["profiles"][name] = copy.deepcopy(profiles[source])
    new_lines = list(lines)
    if data is not None:
        path = resolve_path(data)
        if not path.is_dir():
            raise ConfigError(f"--data {data}: folder not found ({path}); expected <category>/train/good, test/...")
        from .datasets import mvtec
        from .datasets.registry import DATASETS, _layout_root

        if name in DATASETS:
            raise ConfigError(f"profile name '{name}' is a built-in dataset name; with --data pick another")
        layout = layout or detect_layout(path)
        proto = LAYOUT_PROTOCOL[layout]
        categories = mvtec.categories(_layout_root(path))
        variants = variants or [v.id for v in VARIANTS if proto in (*v.protocols, *v.also)]
        bad = [v for v in variants if v not in VARIANTS_BY_ID or proto not in (*VARIANTS_BY_ID[v].protocols,
                                                                              *VARIANTS_BY_ID[v].also)]
        if bad:
            raise ConfigError(f"--variants: {bad} unknown or not registered for protocol {proto}")
        seeds = list((profiles[source]["protocols"].get(proto) or {}).get("seeds") or [0])
        p0 = next(i for i, ln in enumerate(block) if _key(ln, 4) == "protocols")
        block[p0:_block_end(block, p0, 4)] = _protocol_block(name, layout, data, categories, seeds, variants)
        want["profiles"][name]["protocols"] = {proto: {"dataset": name, "categories": categories, "seeds": seeds,
                                                       "variants": {v: None for v in variants}}}
        want.setdefault("datasets", {}).setdefault("custom", {})[name] = {"layout": layout, "path": data}
        entry = f"{name}: {{layout: {layout}, path: {json.dumps(data)}}}\n"
        ds = _top(new_lines, "datasets")
        if ds is None:  # a new section before profiles:
            new_lines[top:top] = ["# Users' own data sets (docs/data.md): name -> {layout, path}; flagged non-official\n",
                                  "datasets:\n", "  custom:\n", f"    {entry}", "\n"]
        else:
            cu = next((i for i in range(ds + 1, _block_end(new_lines, ds, 0)) if _key(new_lines[i], 2) == "custom"),
                      None)
            if cu is None:
                new_lines.insert(ds + 1, f"  custom:\n    {entry}")
            elif re.match(r"^  custom:\s*\{\}\s*(#.*)?$", new_lines[cu]):
                new_lines[cu] = f"  custom:\n    {entry}"
            else:
                new_lines.insert(cu + 1, f"    {entry}")
    top = _top(new_lines, "profiles")
    end_all = _block_end(new_lines, top, 0)
    origin = f" on {data}" if data else ""
    note = f"\n  # created by `adrepro profile new {name} --from {source}`{origin}; results in results/{name}/\n"
    if not new_lines[end_all - 1].endswith("\n"):
        new_lines[end_all - 1] += "\n"
    new_lines[end_all:end_all] = [note, *block]
    out = "".join(new_lines)
    if yaml.safe_load(out) != want:
        raise ConfigError(f"{PARAMS_FILE}: could not add profile '{name}' by text (unusual layout of "
                          f"profiles.{source} or datasets); copy the block by hand")
    validate(want)
    return out


def create(name: str, source: str, data: str | None, layout: str | None, variants: list[str] | None) -> None:
    PARAMS_FILE.write_text(new_profile_text(PARAMS_FILE.read_text(), name, source, data, layout, variants))
