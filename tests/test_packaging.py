"""Packaging: the installed package has every subpackage and every kernel source.

``cuda_src/`` and ``adapters/`` sit at the top level of the repository and are installed as
``longconv.cuda_src`` and ``longconv.adapters``. The fast tests check the package map of
``pyproject.toml`` and the installation the suite runs in (normally the editable install of
the README); the slow test builds a wheel, installs it into a fresh virtual environment and
imports it from there.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_SUFFIXES = (".cu", ".cuh", ".h")
# Directories of the repository that become packages, by installed name.
PACKAGE_DIRS = {"longconv": "longconv", "longconv.adapters": "adapters",
                "longconv.cuda_src": "cuda_src"}


def _source_kernel_files() -> list[str]:
    root = REPO / "cuda_src"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix in KERNEL_SUFFIXES)


def _installed_kernel_files() -> list[str]:
    def walk(node, prefix=""):
        for child in node.iterdir():
            if child.is_dir():
                yield from walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(KERNEL_SUFFIXES):
                yield prefix + child.name

    return sorted(walk(importlib.resources.files("longconv.cuda_src")))


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, which `build` depends on there
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def test_package_map_covers_every_subpackage():
    """Every directory with an ``__init__.py`` is listed, so none is left out of the wheel."""
    config = _pyproject()["tool"]["setuptools"]
    assert config["package-dir"] == PACKAGE_DIRS
    found = set()
    for name, directory in PACKAGE_DIRS.items():
        for init in (REPO / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / directory)
            if "__pycache__" not in rel.parts:
                found.add(".".join((name, *rel.parts)))
    assert sorted(found) == sorted(config["packages"])


def test_metadata():
    project = _pyproject()["project"]
    assert project["name"] == "longconv"
    assert project["requires-python"] == ">=3.10"
    assert {d.split(">")[0].split("=")[0] for d in project["dependencies"]} == {"numpy", "scipy"}
    extras = project["optional-dependencies"]
    assert {"cuda13", "cuda12", "torch", "jax", "dask", "audio", "test"} <= set(extras)
    assert project["scripts"] == {"longconv": "longconv._cli:main"}


def test_current_install_finds_subpackages_and_kernel_sources():
    import longconv
    import longconv.adapters

    assert _installed_kernel_files() == _source_kernel_files()
    if Path(longconv.__file__).resolve().parent == REPO / "longconv":
        # an editable install (or the source tree): the mapped directories are the real ones
        assert Path(longconv.adapters.__file__).resolve().parent == REPO / "adapters"
        cuda_src = importlib.resources.files("longconv.cuda_src")
        assert Path(str(cuda_src)).resolve() == REPO / "cuda_src"


def _tracked_and_untracked_files() -> list[Path] | None:
    """Files ``git`` would ship (tracked or untracked, not ignored); None without git."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()
    return [REPO / name for name in out.split("\0") if name]


def _copy_source_tree(dst: Path) -> None:
    """Copy the project without build outputs or virtual environments."""
    files = _tracked_and_untracked_files()
    if files is None:
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
            ".hypothesis"))
        return
    for src in files:
        if src.is_file():
            target = dst / src.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed with exit code {proc.returncode}\n"
                    f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def _build_wheel(src: Path, outdir: Path) -> Path:
    try:
        import build  # noqa: F401

        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(src)]
    except ImportError:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(outdir), str(src)]
    _run(cmd, cwd=src)
    wheels = list(outdir.glob("longconv-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


_CHECK_INSTALLED = textwrap.dedent("""
    import importlib.metadata, importlib.resources, json, pathlib, sys

    import longconv
    import longconv.adapters
    import longconv.cuda_src

    def walk(node, prefix=""):
        for child in node.iterdir():
            if child.is_dir():
                yield from walk(child, prefix + child.name + "/")
            elif child.name.endswith((".cu", ".cuh", ".h")):
                yield prefix + child.name

    print(json.dumps({
        "prefix": str(pathlib.Path(sys.prefix).resolve()),
        "files": [str(pathlib.Path(m.__file__).resolve())
                  for m in (longconv, longconv.adapters, longconv.cuda_src)],
        "kernels": sorted(walk(importlib.resources.files("longconv.cuda_src"))),
        "version": importlib.metadata.version("longconv"),
        "module_version": getattr(longconv, "__version__", None),
        "requires": importlib.metadata.requires("longconv"),
    }))
""")


@pytest.mark.slow
def test_wheel_in_fresh_venv(tmp_path):
    """Build the wheel, install it into a new virtual environment and import it there."""
    src = tmp_path / "src"
    _copy_source_tree(src)
    wheel = _build_wheel(src, tmp_path / "dist")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bindir = "Scripts" if os.name == "nt" else "bin"
    python = env_dir / bindir / ("python.exe" if os.name == "nt" else "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    # The dependencies (numpy, scipy) come from the index, normally straight from pip's cache.
    _run([python, "-m", "pip", "install", "-q", str(wheel)], env=env)

    run_dir = tmp_path / "elsewhere"  # not the source tree, so only the wheel is importable
    run_dir.mkdir()
    out = _run([python, "-c", _CHECK_INSTALLED], cwd=run_dir, env=env).stdout
    report = json.loads(out.strip().splitlines()[-1])

    prefix = Path(report["prefix"])
    for file in report["files"]:
        assert prefix in Path(file).parents, f"{file} is not inside the fresh environment"
    assert report["kernels"] == _source_kernel_files()
    assert report["version"] == _pyproject()["project"]["version"]
    if report["module_version"] is not None:
        assert report["module_version"] == report["version"]
    assert any(r.startswith("numpy") for r in report["requires"])

    script = env_dir / bindir / ("longconv.exe" if os.name == "nt" else "longconv")
    help_text = _run([script, "--help"], cwd=run_dir, env=env).stdout
    assert "demo" in help_text and "info" in help_text
