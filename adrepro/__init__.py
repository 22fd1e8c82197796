"""adrepro: reproduce KD anomaly-detection papers from one DVC + MLflow pipeline.

Layout: the repository's top-level ``methods/``, ``datasets/`` and ``pipelines/`` folders are the
sub-packages ``adrepro.methods``, ``adrepro.datasets`` and ``adrepro.pipelines`` (pyproject's
``package-dir``). They hold no ``__init__.py``, so from the repository root a bare ``import datasets``
still finds Hugging Face's package, never ours. In a source checkout (editable install) the
checkout root is added to this package's search path so those folders resolve in place.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "methods").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 - package __path__

REPO_ROOT = _checkout
