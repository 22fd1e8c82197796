"""Stage `teacher@<id>`: provision one teacher (hash-pinned download, local file, distillation or seeded random init)."""

from __future__ import annotations

from typing import Any

from adrepro.config import load_params
from adrepro.methods.teachers import provision

from .common import check_dvc_profile


def main(args: Any) -> None:
    params = load_params()
    check_dvc_profile(params)
    teacher = provision(args.teacher, params, params["profile"])
    print(f"[teacher] {teacher.id}: {teacher.path} {teacher.provenance}")
