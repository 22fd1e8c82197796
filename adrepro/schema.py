"""The params.yaml schema: one pydantic model per section and method family, checked as a whole before any work.

Method sections (``methods.<family>`` and ``profiles.<p>.methods.<family>``) are built at run time from each
family's ``DEFAULTS`` dict in ``methods/<family>/method.py``: its keys are the keys allowed, the type of each default
is the key's type (``_TYPES`` refines keys whose default is None or a union), ``_RANGES`` bounds known keys. A key
added to a ``DEFAULTS`` dict is accepted here with no edit. ``adrepro params-doc`` renders this schema into
docs/params.md.
"""

from __future__ import annotations

import difflib
import importlib
import keyword
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

STRICT = ConfigDict(extra="forbid", strict=True)
PROTOCOLS = ("loco", "mvtec_ad", "cifar10", "cifar100", "fmnist")
LAYOUT_PROTOCOL = {"mvtec_ad": "mvtec_ad", "mvtec_loco": "loco"}  # datasets.custom.<name>.layout -> protocol key
# keys a family takes beyond its DEFAULTS (the registry's seed/device/protocol are never params.yaml keys):
# EfficientAD's out_channels, derived from the teacher file and checked against it when the model is built
EXTRA_KEYS: dict[str, dict[str, Any]] = {"efficientad": {"out_channels": None}}
# smallest input each family's networks take: EfficientAD's AE encoder (five stride-2 convs, methods/efficientad/
# model.py) and VGG16/ResNet18 (five 2x downsamplings); fcd_vit: a multiple of the teacher's patch size (checked below)
MIN_IMAGE_SIZE = {"efficientad": 32, "kd_cnn": 32, "fcd_vit": 1}

_NUM = float  # strict float accepts ints, never bools or strings
_TYPES: dict[str, Any] = {
    "score_anchor": Optional[bool], "anchor_layers": Optional[list[int]], "groupc": list[int],
    "lr_mvtec": Optional[_NUM], "batch_size_mvtec": Optional[int], "warmup_steps": Optional[int],
    "anchor_momentum": Optional[_NUM], "taps": Optional[list[str]], "gram_pairs": Union[str, list[list[int]]],
    "out_channels": int, "disable": list[str],
}
_RANGES: dict[str, dict[str, float]] = {
    "steps": {"ge": 1}, "image_size": {"ge": 1}, "checkpoint_every": {"ge": 1}, "batch_size": {"ge": 1},
    "batch_size_mvtec": {"ge": 1}, "eval_batch_size": {"ge": 1}, "lr": {"gt": 0}, "lr_mvtec": {"gt": 0},
    "warmup_steps": {"ge": 0}, "weight_decay": {"ge": 0}, "momentum": {"ge": 0, "lt": 1}, "grad_clip": {"ge": 0},
    "top_k": {"ge": 1}, "p_hard": {"ge": 0, "le": 1}, "q_a": {"gt": 0, "lt": 1}, "q_b": {"gt": 0, "lt": 1},
    "lr_decay_at": {"gt": 0, "le": 1}, "ae_dropout": {"ge": 0, "lt": 1}, "anchor_momentum": {"gt": 0, "le": 1},
    "pdn_width": {"gt": 0}, "ae_latent": {"ge": 1}, "out_channels": {"ge": 1}, "lambda": {"ge": 0},
    "lambda_dir": {"ge": 0}, "lambda_csf": {"ge": 0}, "map_weight_local": {"ge": 0, "le": 1}, "srm_pool": {"ge": 1},
    "crm_reduction": {"ge": 1}, "val_fraction": {"ge": 0, "lt": 1}, "lambda_mse": {"ge": 0}, "lambda_mse_mvtec": {"ge": 0},
}


class _Model(BaseModel):
    model_config = STRICT


def _str_or_int(v: Any) -> Any:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, dict) else v


Category = Annotated[str, BeforeValidator(_str_or_int)]


class Gate(_Model):
    tolerance: Annotated[float, Field(ge=0, lt=1, description="largest allowed AUROC drop below the baseline")]


class Source(_Model):
    file: Optional[str] = Field(None, description="archive file name of the dataset it replaces")
    url: Optional[str] = Field(None, description="mirror URL")
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]] = Field(None, description="pin")


class CustomDataset(_Model):
    layout: Literal["mvtec_ad", "mvtec_loco"] = Field(description="folder layout: mvtec_ad (protocol mvtec_ad) or "
                                                                   "mvtec_loco (protocol loco)")
    path: str = Field(description="the folder holding <category>/train/good, test/..., ground_truth/... "
                                  "(relative: to the project root)")


class Datasets(_Model):
    custom: dict[str, CustomDataset] = Field(
        default_factory=dict, description="a user's own data sets: <name>: {layout, path}, used as "
                                          "profiles.<p>.protocols.<protocol>.dataset; flagged non-official")
    allow_download: bool = Field(True, description="false: a missing dataset is an error, never a download")
    val_fraction: dict[Literal["mvtec_ad", "oneclass", "elpv"], Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=dict, description="share of train/good held out as validation, per protocol kind")
    sources: dict[str, Annotated[list[Source], BeforeValidator(_as_list)]] = Field(
        default_factory=dict, description="<dataset>: {url, sha256} or [{file, url, sha256}] mirror / pin override")


class Protocol(_Model):
    dataset: str = Field(description="a dataset of datasets/registry.py")
    categories: Annotated[list[Category], Field(min_length=1, description="a list, e.g. [tiles]")]
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, description="a list, e.g. [0]")]
    variants: Optional[dict[str, Optional[list[Annotated[int, Field(ge=0)]]]]] = Field(
        None, description="only these variants on this protocol: {variant id: seeds | null (= seeds)}; "
                          "may list variants registered for it under `also` (adrepro/registry.py)")
    test_subset: Optional[Annotated[int, Field(ge=1)]] = Field(
        None, description="evaluate on at most this many test images (seeded, stratified by anomaly type)")


class Latency(_Model):
    warmup: Annotated[int, Field(ge=0)]
    iters: Annotated[int, Field(ge=1)]
    throughput_batch: Annotated[int, Field(ge=1)]
    throughput_iters: Annotated[int, Field(ge=1)]


class Ray(_Model):
    num_cpus: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="CPUs of a local Ray instance (null: all)")
    max_retries: Annotated[int, Field(ge=0)] = Field(2, description="retries of a task whose worker died")
    resources: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        default_factory=dict, description="per stage kind (default, train, ...): {num_cpus, num_gpus}")


class Run(_Model):
    priority: list[str] = Field(default_factory=list, description="variants/experiments started first under --budget")
    executor: Literal["local", "ray"] = Field("local", description="`adrepro run` executor")
    jobs: Annotated[int, Field(ge=1)] = Field(1, description="local executor: stages at once")
    ray: Optional[Ray] = None


def _penalty_kinds() -> tuple[str, ...]:
    from adrepro.methods.teachers.penalty import KINDS

    return (*KINDS, "none")


def _families() -> dict[str, str]:
    from adrepro.methods.base import _FAMILIES

    return {f: target.partition(":")[0] for f, target in _FAMILIES.items()}


def family_defaults(family: str) -> dict[str, Any]:
    """The family's ``DEFAULTS`` dict (read at run time) plus its ``EXTRA_KEYS``."""
    module = importlib.import_module(_families()[family])
    return {**module.DEFAULTS, **EXTRA_KEYS.get(family, {})}


def key_type(key: str, default: Any) -> Any:
    """A method key's type: from ``_TYPES``, else from its default's type; numbers bounded by ``_RANGES``."""
    if key in _TYPES:
        base = _TYPES[key]
    elif default is None:
        base = Any
    elif isinstance(default, (list, tuple)):
        kinds = {type(x) for x in default}
        base = list[kinds.pop()] if len(kinds) == 1 and not isinstance(default[0], (list, dict)) else list[Any]
    elif isinstance(default, dict):
        base = dict[str, Any]
    else:
        base = type(default)
    optional = get_origin(base) is Union and type(None) in get_args(base)
    inner = next(a for a in get_args(base) if a is not type(None)) if optional else base
    if key in _RANGES and inner in (int, float):
        inner = Annotated[inner, Field(**_RANGES[key])]
    return Optional[inner] if optional else inner


def _field_name(key: str) -> str:
    return key if key.isidentifier() and not keyword.iskeyword(key) else f"{key}_"


def family_choices(family: str) -> dict[str, tuple]:
    """The family's ``CHOICES`` dict: the allowed values of its string options (read at run time)."""
    return dict(getattr(importlib.import_module(_families()[family]), "CHOICES", {}))


def _typed(key: str, default: Any, choices: dict[str, tuple]) -> Any:
    if key not in choices:
        return key_type(key, default)
    allowed = Literal[tuple(choices[key])]  # type: ignore[valid-type]
    return Optional[allowed] if default is None else allowed


def method_model(family: str) -> type[BaseModel]:
    choices = family_choices(family)
    fields = {_field_name(k): (_typed(k, v, choices), Field(v, alias=k)) for k, v in family_defaults(family).items()}
    return create_model(f"methods.{family}", __config__=STRICT, **fields)


def _sections(suffix: str) -> type[BaseModel]:
    fields = {f: (Optional[method_model(f)], None) for f in _families()}
    return create_model(f"Methods{suffix}", __config__=STRICT, **fields)


def _paths_model() -> type[BaseModel]:
    from adrepro.datasets.registry import DATASETS

    fields: dict[str, Any] = {
        "data_root": (str, Field(description="downloads / extractions / generated data")),
        "teachers_root": (str, Field(description="provisioned teacher weights")),
        "shared_data": (Optional[str], Field(None, description="offline archives of this workplace")),
        "imagenet": (Optional[str], Field(None, description="ImageNet/Imagenette folder: penalty images, PDN distillation")),
        "teacher_files": (dict[str, str], Field(default_factory=dict, description="{teacher id: local weight file}")),
    }
    for key in sorted({s.path_key for s in DATASETS.values() if s.path_key}):
        fields.setdefault(key, (Optional[str], Field(None, description="local copy (folder or archive): no download")))
    return create_model("Paths", __config__=STRICT, **fields)


def _profile_model() -> type[BaseModel]:
    kinds = Literal[_penalty_kinds()]  # type: ignore[valid-type]
    distill = create_model(
        "TeacherDistill", __config__=STRICT,
        steps=(Optional[Annotated[int, Field(ge=1)]], None), image_size=(Optional[Annotated[int, Field(ge=32)]], None),
        batch_size=(Optional[Annotated[int, Field(ge=1)]], None), lr=(Optional[Annotated[float, Field(gt=0)]], None),
        images=(Optional[kinds], None))
    return create_model(
        "Profile", __config__=STRICT,
        device=(Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?)$")],
                Field("cpu", description="cpu | cuda | cuda:N; cuda is an error where CUDA is absent")),
        torch_threads=(Annotated[int, Field(ge=0)], Field(0, description="torch threads (0 = torch default)")),
        variants=(Optional[Annotated[list[str], Field(min_length=1)]],
                  Field(None, description="run only these registry variants (default: all)")),
        protocols=(dict[Literal[PROTOCOLS], Protocol], Field(description="protocol: {dataset, categories, seeds}")),  # type: ignore[valid-type]
        teachers=(dict[str, Optional[str]], Field(description="teacher role: teacher id (null: not runnable)")),
        penalty_images=(Optional[kinds], Field(None, description="EfficientAD penalty images; required when the "
                                                                 "profile runs efficientad; none = explicitly off")),
        teacher_distill=(Optional[distill], Field(None, description="PDN re-distillation settings")),
        methods=(_sections("Profile"), Field(description="per family: image_size, steps and scale settings")),
        latency=(Latency, Field(description="the latency stage: warm-up passes, timed passes, throughput batch")),
        mlflow_live=(bool, Field(False, description="training opens its MLflow run at once (RUNNING in `mlflow ui`) "
                                                     "and logs the curves as it goes; `track` finishes that run")),
        mlflow_every=(Annotated[int, Field(ge=1)], Field(50, description="live run: send the curves every N steps")),
    )


def root_model() -> type[BaseModel]:
    """The whole params.yaml."""
    return create_model(
        "Params", __config__=STRICT,
        profile=(str, Field(description="the active profile (`adrepro profile <name>`)")),
        gate=(Gate, ...), run=(Optional[Run], None), paths=(_paths_model(), ...), datasets=(Optional[Datasets], None),
        methods=(_sections(""), Field(description="the papers' hyperparameters per family (all profiles)")),
        profiles=(Annotated[dict[str, _profile_model()], Field(min_length=1)], ...),  # type: ignore[valid-type]
    )


# ------------------------------------------------------------------ errors -> messages naming the key path
def _unwrap(t: Any) -> Any:
    while True:
        if get_origin(t) is Annotated:
            t = get_args(t)[0]
        elif get_origin(t) is Union:
            t = next((a for a in get_args(t) if a is not type(None)), t)
            if get_origin(t) is Union:
                return t
        else:
            return t


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the mapping at ``loc`` (walks the model's fields, dict values and list items)."""
    t: Any = model
    for part in loc:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = next((f for n, f in t.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            t = field.annotation
        elif get_origin(t) in (dict, list):
            t = get_args(t)[-1]
        else:
            return []
    t = _unwrap(t)
    return [f.alias or n for n, f in t.model_fields.items()] if isinstance(t, type) and issubclass(t, BaseModel) else []


def suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _is_tag(part: Any) -> bool:
    """pydantic's loc parts that are no key: union member tags (``str``, ``list[list[int]]``) and ``[key]``."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "[key]") or "[" in part)


def _message(model: type[BaseModel], err: dict[str, Any]) -> str:
    parts = [p for p in err["loc"] if p != "[key]"]
    first_tag = next((i for i, p in enumerate(parts) if _is_tag(p)), None)
    kind, value = err["type"], err.get("input")
    if first_tag is not None:  # a union: name the key and the member types (errors inside members vary)
        return f"{dotted(tuple(parts[:first_tag]))}: invalid value (must be one of: {parts[first_tag]})"
    loc = tuple(parts)
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1])
        return f"{dotted(loc)}: unknown key{suggest(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{dotted(loc)}: missing key"
    if kind == "list_type":
        return f"{dotted(loc)}: must be a list (write [{value}], not {value}), got {value!r}"
    if kind in ("dict_type", "model_type"):
        return f"{dotted(loc)}: must be a mapping, got {value!r}"
    if kind == "literal_error":
        return f"{dotted(loc)}: {value!r} is not allowed{suggest(value, _choices(err))}; {err['msg'].lower()}"
    hint = ""
    if kind in ("float_type", "int_type") and isinstance(value, str):
        try:
            hint = f" (YAML reads {value} as a string: write {float(value)!r})"
        except ValueError:
            pass
    return f"{dotted(loc)}: {err['msg'].lower()}, got {value!r}{hint}"


def _choices(err: dict[str, Any]) -> list[str]:
    expected = (err.get("ctx") or {}).get("expected", "")
    return [c.strip(" '") for c in expected.replace(" or ", ",").split(",") if c.strip(" '")]


def schema_errors(params: Any) -> list[str]:
    """Every problem of ``params`` (the parsed params.yaml), one line each naming the key path; [] when valid."""
    if not isinstance(params, dict):
        return [f"the file must be a mapping of keys, got {type(params).__name__}"]
    model = root_model()
    try:
        model.model_validate(params)
    except ValidationError as exc:
        messages: dict[str, str] = {}
        for e in exc.errors(include_url=False):
            key, _, text = _message(model, e).partition(": ")
            if key in messages and "(must be one of: " in text:  # union members: one line listing them all
                messages[key] = messages[key][:-1] + ", " + text.rsplit("(must be one of: ", 1)[1]
            else:
                messages.setdefault(key, text)
        return [f"{k}: {v}" for k, v in messages.items()]
    return semantic_errors(params)


def semantic_errors(params: dict[str, Any]) -> list[str]:
    """Checks across sections, on a structurally valid file: names that must exist, merged method sections."""
    from adrepro.datasets.registry import DATASETS
    from adrepro.methods.teachers.registry import BACKBONES
    from adrepro.registry import VARIANTS, VARIANTS_BY_ID, protocol_variant_errors

    out: list[str] = []
    profiles = params["profiles"]
    if params["profile"] not in profiles:
        out.append(f"profile: '{params['profile']}' is not under profiles{suggest(params['profile'], profiles)}; "
                   f"known: {', '.join(profiles)}")
    roles = {v.teacher_role for v in VARIANTS} | {"pdn_m"}
    custom = (params.get("datasets") or {}).get("custom") or {}
    for name in custom:
        if name in DATASETS:
            out.append(f"datasets.custom.{name}: '{name}' is a built-in dataset (datasets/registry.py); pick another name")
    for src in ((params.get("datasets") or {}).get("sources") or {}):
        if src not in DATASETS:
            out.append(f"datasets.sources.{src}: unknown dataset{suggest(src, DATASETS)}")
    for tid in params["paths"].get("teacher_files") or {}:
        if tid not in BACKBONES:
            out.append(f"paths.teacher_files.{tid}: unknown teacher id{suggest(tid, BACKBONES)}")
    for name, prof in profiles.items():
        where = f"profiles.{name}"
        for v in prof.get("variants") or []:
            if v not in VARIANTS_BY_ID:
                out.append(f"{where}.variants: unknown variant '{v}'{suggest(v, VARIANTS_BY_ID)}")
        out += protocol_variant_errors(where, prof)
        for proto, spec in prof["protocols"].items():
            if spec["dataset"] in custom:
                if LAYOUT_PROTOCOL[custom[spec["dataset"]]["layout"]] != proto:
                    out.append(f"{where}.protocols.{proto}.dataset: '{spec['dataset']}' has layout "
                               f"{custom[spec['dataset']]['layout']} (datasets.custom): put it under protocols."
                               f"{LAYOUT_PROTOCOL[custom[spec['dataset']]['layout']]}")
            elif spec["dataset"] not in DATASETS:
                out.append(f"{where}.protocols.{proto}.dataset: unknown dataset '{spec['dataset']}'"
                           f"{suggest(spec['dataset'], [*DATASETS, *custom])}")
        for role, tid in prof["teachers"].items():
            if role not in roles:
                out.append(f"{where}.teachers.{role}: unknown teacher role{suggest(role, roles)}; known: {sorted(roles)}")
            if tid is not None and tid not in BACKBONES:
                out.append(f"{where}.teachers.{role}: unknown teacher id '{tid}'{suggest(tid, BACKBONES)}")
        if "efficientad" in prof["methods"] and prof.get("penalty_images") is None:
            out.append(f"{where}.penalty_images: missing key (the profile runs efficientad): one of "
                       f"{', '.join(_penalty_kinds())}")
        for family, section in prof["methods"].items():
            if section is None:
                out.append(f"{where}.methods.{family}: must be a mapping, got None")
                continue
            merged = {**(params["methods"].get(family) or {}), **section}
            for key in ("image_size", "steps"):
                if key not in merged:
                    out.append(f"{where}.methods.{family}.{key}: missing key (not in methods.{family} either)")
            size = merged.get("image_size")
            if isinstance(size, int) and size < MIN_IMAGE_SIZE[family]:
                out.append(f"{where}.methods.{family}.image_size: {family} needs >= {MIN_IMAGE_SIZE[family]}, got {size}")
            patch = (BACKBONES.get(prof["teachers"].get("vit") or "") or {}).get("kwargs", {}).get("patch_size")
            if family == "fcd_vit" and isinstance(size, int) and patch and size % patch:
                out.append(f"{where}.methods.fcd_vit.image_size: must be a multiple of the ViT teacher's patch size "
                           f"{patch} ({prof['teachers']['vit']}), got {size}")
    return out
