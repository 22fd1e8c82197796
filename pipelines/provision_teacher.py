"""Stage `teacher@<id>`: provision one teacher (hash-pinned download, local file, distillation or seeded random init)."""

from __future__ import annotations

from typing import Any

from adrepro.config import load_params
from adrepro.methods.teachers import provision
from adrepro.tracking import failed_stage

from .common import check_dvc_profile


def main(args: Any) -> None:
    params = load_params()
    check_dvc_profile(params)
    prof = params["profiles"][params["profile"]]
    config = {"paths": params.get("paths"), "teachers": prof.get("teachers"), "teacher_distill": prof.get("teacher_distill")}
    with failed_stage("teacher", params["profile"], args.teacher, config):
        teacher = provision(args.teacher, params, params["profile"])
    print(f"[teacher] {teacher.id}: {teacher.path} {teacher.provenance}")
