"""adrepro: reproduce KD anomaly-detection papers from one DVC + MLflow pipeline.

Layout: the repository's top-level ``methods/``, ``datasets/`` and ``pipelines/`` folders are the
sub-packages ``adrepro.methods``, ``adrepro.datasets`` and ``adrepro.pipelines`` (pyproject's
``package-dir``). They hold no ``__init__.py``, so from the repository root a bare ``import datasets``
still finds Hugging Face's package, never ours. In a source checkout (editable install) the
checkout root is added to this package's search path so those folders resolve in place.
"""

import os as _os
from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "methods").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 - package __path__


def _project_root() -> _Path:
    """The project whose params.yaml/dvc.yaml we run: $ADREPRO_ROOT, else the nearest ancestor of the
    working directory holding params.yaml and pyproject.toml (DVC runs stages there), else the checkout."""
    if _os.environ.get("ADREPRO_ROOT"):
        return _Path(_os.environ["ADREPRO_ROOT"]).resolve()
    cwd = _Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if (d / "params.yaml").is_file() and (d / "pyproject.toml").is_file():
            return d
    return _checkout


REPO_ROOT = _project_root()
