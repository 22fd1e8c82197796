"""Teachers: backbone registry, hash-pinned provisioning, offline substitutes, PDN re-distillation.

See docs/teachers.md. Typical use::

    teacher = provision(teacher_for(params, profile, "pdn"), params, profile, seed)
    module = load_module(teacher)          # verified weights, eval mode, frozen
    teacher.provenance                     # id, source, sha256, paper_teacher, substitute_reason, licence
"""

from .distill import BackboneTarget, distill_pdn
from .penalty import penalty_images
from .provision import (load_module, provision, read_teacher_file, save_teacher_file, state_sha256, teacher_for,
                        teacher_path)
from .registry import BACKBONES, build_module, get_backbone
from .weightfile import TeacherFileError, read_weights

__all__ = ["BACKBONES", "BackboneTarget", "TeacherFileError", "build_module", "distill_pdn", "get_backbone",
           "load_module", "penalty_images", "provision", "read_teacher_file", "read_weights", "save_teacher_file",
           "state_sha256", "teacher_for", "teacher_path"]
