"""The card's folders are sub-packages of adrepro; nothing shadows Hugging Face's `datasets`."""

import subprocess
import sys
import tomllib

from adrepro import REPO_ROOT

NAMESPACE_DIRS = ("methods", "datasets", "pipelines")


def test_card_folders_have_no_top_level_init():
    for d in NAMESPACE_DIRS:
        assert (REPO_ROOT / d).is_dir()
        assert not (REPO_ROOT / d / "__init__.py").exists(), f"{d}/__init__.py would make `import {d}` shadow"


def test_bare_import_datasets_from_repo_root_is_not_ours():
    """From the repo root a regular `datasets` package (Hugging Face's, if installed) must win over our folder."""
    code = "import importlib.util as u; s = u.find_spec('datasets'); print(s.origin if s else None)"
    origin = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert not origin.startswith(str(REPO_ROOT)), f"`import datasets` resolves to our folder: {origin}"


def test_pyproject_lists_every_package_folder():
    cfg = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    for top, pkg in (("methods", "adrepro.methods"), ("datasets", "adrepro.datasets"), ("pipelines", "adrepro.pipelines")):
        assert mapping[pkg] == top
        for sub in (REPO_ROOT / top).rglob("*.py"):
            rel = sub.parent.relative_to(REPO_ROOT / top)
            name = ".".join([pkg, *rel.parts])
            assert name in listed, f"{sub}: package {name} missing from pyproject [tool.setuptools] packages"


def test_subpackages_import_through_adrepro():
    import adrepro.datasets.base
    import adrepro.methods.base
    import adrepro.pipelines.common  # noqa: F401

    assert adrepro.datasets.base.__file__.startswith(str(REPO_ROOT / "datasets"))
