"""The experiment registry: every method x variant the papers report, and the paper cells each feeds.

Adding a variant is one ``Variant`` entry below. The active profile in params.yaml expands each
variant over its protocols' categories and seeds into ``Experiment``s, which name DVC stages,
result folders (``results/<profile>/<exp>/``) and MLflow runs. A protocol's optional ``variants:`` map
(params.yaml ``profiles.<p>.protocols.<proto>.variants``) picks the variants and seeds run there, including
variants registered for it only under ``also`` (paper A on plain MVTec AD; the CNN family on every B protocol).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, load_params, profile_config


@dataclass(frozen=True)
class Cell:
    """A (table or figure, row) of a paper that a variant's runs reproduce. Rows/tables as printed."""

    table: str  # "T1".."T4" for tables, "F3".."F8" for figure-only ablations
    row: str  # first cell of the printed row, without <sup>/<b> markup (e.g. "本文", "1 (Baseline)")


@dataclass(frozen=True)
class Variant:
    id: str
    paper: str  # "A" | "B"
    method: str  # method family: efficientad | fcd_vit | kd_cnn
    title: str
    protocols: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    cells: tuple[Cell, ...] = ()
    teacher_role: str = ""  # key of profiles.<p>.teachers
    also: tuple[str, ...] = ()  # further protocols it may run on, only where a profile lists it (protocols.<p>.variants)


def _a(id_: str, title: str, cells: tuple[Cell, ...], **opts: Any) -> Variant:
    options = dict(dual_ae=False, srm=False, crm=False, sfm=False, csf=False, serial=False)
    options.update(opts)
    return Variant(id_, "A", "efficientad", title, ("loco",), options, cells, teacher_role="pdn", also=("mvtec_ad",))


def _b(id_: str, title: str, protocols: tuple[str, ...], cells: tuple[Cell, ...], method: str = "fcd_vit", **opts: Any) -> Variant:
    if method == "fcd_vit":
        options = dict(distill=True, gram=True, anchor=True, pos_strategy=2)
        role = "vit"
    else:
        options = dict(backbone="vgg16", anchor=False, preset="mkdad")  # MKDAD as published (methods/kd_cnn)
        role = opts.get("backbone", "vgg16")
    options.update(opts)
    also = tuple(p for p in ALL_B if p not in protocols) if method == "kd_cnn" else ()
    return Variant(id_, "B", method, title, protocols, options, cells, teacher_role=role, also=also)


ALL_B = ("cifar10", "cifar100", "fmnist", "mvtec_ad")

VARIANTS: tuple[Variant, ...] = (
    # ---- Paper A: Table 2 (dual AE / SRM / CRM), Table 3 (SFM / CSF), Table 1 rows, Fig. 8 ----
    _a("a-t2-e1", "EfficientAD-S baseline", (Cell("T1", "EfficientAD"), Cell("T2", "1 (Baseline)"), Cell("T3", "1 (Baseline)"))),
    _a("a-t2-e2", "+SRM (single AE)", (Cell("T2", "2"),), srm=True),
    _a("a-t2-e3", "+CRM (single AE)", (Cell("T2", "3"),), crm=True),
    _a("a-t2-e4", "parallel dual AE", (Cell("T2", "4"),), dual_ae=True),
    _a("a-t2-e5", "dual AE + SRM", (Cell("T2", "5"),), dual_ae=True, srm=True),
    _a("a-t2-e6", "dual AE + CRM", (Cell("T2", "6"),), dual_ae=True, crm=True),
    _a("a-t2-e7", "dual AE + SRM + CRM", (Cell("T2", "7"), Cell("T3", "7")), dual_ae=True, srm=True, crm=True),
    _a("a-t3-e8", "baseline + CSF loss", (Cell("T3", "8"),), csf=True),
    _a("a-t3-e9", "exp 7 + SFM", (Cell("T3", "9"),), dual_ae=True, srm=True, crm=True, sfm=True),
    _a("a-t3-e10", "exp 7 + CSF loss", (Cell("T3", "10"),), dual_ae=True, srm=True, crm=True, csf=True),
    _a("a-t3-e11", "full method (exp 7 + SFM + CSF)", (Cell("T1", "本文"), Cell("T3", "11"), Cell("F8", "parallel dual AE")),
       dual_ae=True, srm=True, crm=True, sfm=True, csf=True),
    _a("a-f8-serial", "serial single AE with CRM then SRM", (Cell("F8", "serial single AE"),), srm=True, crm=True, serial=True),
    # ---- Paper B: main method (Tables 1-4), loss ablation (Fig. 4), backbones +/- anchor (Figs 3, 5), position encoding (Fig. 7) ----
    _b("b-main", "ViT FCD (distill + Gram + anchor, pos. strategy 2)", ALL_B,
       (Cell("T1", "本文方法"), Cell("T2", "本文方法"), Cell("T3", "本文方法"), Cell("T4", "本文方法"),
        Cell("F4", "ViT+LGram+Lanchor"), Cell("F5", "ViT+Lanchor"), Cell("F7", "strategy 2"))),
    _b("b-f4-distill", "ViT, L_distill only", ("mvtec_ad",), (Cell("F4", "ViT"),), gram=False, anchor=False),
    _b("b-f4-gram", "ViT, L_distill + L_Gram", ("mvtec_ad",), (Cell("F4", "ViT+LGram"), Cell("F5", "ViT")), anchor=False),
    _b("b-f7-pos1", "ViT FCD, pos. strategy 1 (student learns its own)", ("mvtec_ad",), (Cell("F7", "strategy 1"),), pos_strategy=1),
    _b("b-f3-vgg", "VGG16 multi-layer KD (MKDAD-style)", ("cifar10", "mvtec_ad"),
       (Cell("F3", "VGG"), Cell("F5", "VGG"), Cell("T1", "MKDAD"), Cell("T3", "MKDAD"), Cell("T4", "MKDAD")),
       method="kd_cnn", backbone="vgg16"),
    _b("b-f3-vgg-anchor", "VGG16 KD + L_anchor", ("cifar10", "mvtec_ad"), (Cell("F3", "VGG+Lanchor"), Cell("F5", "VGG+Lanchor")),
       method="kd_cnn", backbone="vgg16", anchor=True),
    _b("b-f3-resnet", "ResNet18 KD", ("mvtec_ad",), (Cell("F3", "ResNet"), Cell("F5", "ResNet")), method="kd_cnn", backbone="resnet18"),
    _b("b-f3-resnet-anchor", "ResNet18 KD + L_anchor", ("mvtec_ad",), (Cell("F3", "ResNet+Lanchor"), Cell("F5", "ResNet+Lanchor")),
       method="kd_cnn", backbone="resnet18", anchor=True),
)

VARIANTS_BY_ID = {v.id: v for v in VARIANTS}
assert len(VARIANTS_BY_ID) == len(VARIANTS), "duplicate variant id"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


@dataclass(frozen=True)
class Experiment:
    id: str
    variant: Variant
    profile: str
    protocol: str
    dataset: str
    category: str
    seed: int
    teacher_id: str | None

    @property
    def method(self) -> str:
        return self.variant.method

    def method_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The family's paper hyperparameters (params `methods.<family>`), the profile's scale settings, then the variant's options."""
        prof = profile_config(params, self.profile)
        cfg = dict(params.get("methods", {}).get(self.method, {}))
        cfg.update(prof["methods"][self.method])
        cfg.update(self.variant.options)
        cfg.update(protocol=self.protocol, seed=self.seed, device=prof.get("device", "cpu"))
        return cfg


def protocol_seeds(v: Variant, protocol: str, spec: dict[str, Any] | None) -> list[int] | None:
    """Seeds ``v`` runs with on ``protocol`` (None: not at all). Without ``protocols.<p>.variants`` every variant
    registered for the protocol runs with its ``seeds``; with it, only the listed variants (which may include those
    with the protocol in ``also``), each with its own seed list or, where null, the protocol's ``seeds``."""
    if spec is None:
        return None
    listed = spec.get("variants")
    if listed is None:
        return list(spec["seeds"]) if protocol in v.protocols else None
    if v.id not in listed:
        return None
    return list(listed[v.id] or spec["seeds"])


def protocol_variant_errors(where: str, prof: dict[str, Any]) -> list[str]:
    """``protocols.<p>.variants`` naming a variant unknown or not registered for that protocol."""
    out = []
    for proto, spec in (prof.get("protocols") or {}).items():
        for vid in (spec or {}).get("variants") or {}:
            v = VARIANTS_BY_ID.get(vid)
            if v is None:
                out.append(f"{where}.protocols.{proto}.variants: unknown variant '{vid}'")
            elif proto not in (*v.protocols, *v.also):
                out.append(f"{where}.protocols.{proto}.variants: variant '{vid}' is not registered for protocol "
                           f"'{proto}' (registered: {', '.join((*v.protocols, *v.also))})")
    return out


def experiments(params: dict[str, Any] | None = None, profile: str | None = None) -> list[Experiment]:
    """Expand the registry for one profile (default: the active one)."""
    params = params or load_params()
    profile = profile or params["profile"]
    prof = profile_config(params, profile)
    allowed = prof.get("variants")  # optional subset of variant ids
    errors = protocol_variant_errors(f"profiles.{profile}", prof)
    if errors:
        raise ConfigError(f"params.yaml: {errors[0]}")
    out: list[Experiment] = []
    for v in VARIANTS:
        if allowed is not None and v.id not in allowed:
            continue
        for proto in (*v.protocols, *v.also):
            spec = prof["protocols"].get(proto)
            seeds = protocol_seeds(v, proto, spec)
            if seeds is None:
                continue
            if v.method not in prof["methods"]:
                raise ConfigError(f"params.yaml: profiles.{profile}.methods has no entry for '{v.method}' (needed by {v.id})")
            teacher = prof["teachers"].get(v.teacher_role)
            size = v.options.get("size", prof["methods"][v.method].get("size", params.get("methods", {}).get(v.method, {}).get("size")))
            if v.method == "efficientad" and size == "M":
                if "pdn_m" not in prof["teachers"]:
                    raise ConfigError(f"params.yaml: profiles.{profile}.teachers has no 'pdn_m' entry, needed by "
                                      f"EfficientAD-M ({v.id}); a PDN-S teacher cannot teach a PDN-M student")
                teacher = prof["teachers"]["pdn_m"]
            for cat in spec["categories"]:
                for seed in seeds:
                    eid = f"{v.id}-{proto}-{slug(str(cat))}-s{seed}"
                    out.append(Experiment(eid, v, profile, proto, spec["dataset"], str(cat), int(seed), teacher))
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"params.yaml: profile '{profile}' yields duplicate experiment ids (categories that slug alike?)")
    return out


def get_experiment(exp_id: str, params: dict[str, Any] | None = None, profile: str | None = None) -> Experiment:
    params = params or load_params()
    exps = {e.id: e for e in experiments(params, profile)}
    if exp_id not in exps:
        prof = profile or params["profile"]
        raise ConfigError(f"unknown experiment '{exp_id}' in profile '{prof}'. Known: {', '.join(sorted(exps)) or '(none)'}")
    return exps[exp_id]
