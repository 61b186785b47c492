"""What an install from a wheel needs: every third-party import declared (and pinned to what is installed),
and the shipped configs reachable through ``geosapiens configs`` (the wheel itself: ``test_wheel.py``)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from geosapiens.cli.configs import SHIPPED, missing_config, names
from geosapiens.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("tests", "benchmarks")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503: ``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _declared(extras: tuple[str, ...] = ()) -> set[str]:
    """Distributions ``pip install .[extras]`` installs directly, ``geosapiens[...]`` self-references
    followed."""
    todo, seen, dists = list(PROJECT["dependencies"]), set(extras), set()
    for extra in extras:
        todo += PROJECT["optional-dependencies"][extra]
    while todo:
        requirement = todo.pop()
        self_ref = re.fullmatch(r"geosapiens\[([a-z,]+)\]", requirement)
        if self_ref:
            for extra in set(self_ref[1].split(",")) - seen:
                seen.add(extra)
                todo += PROJECT["optional-dependencies"][extra]
        else:
            dists.add(_name(requirement))
    return dists


def _imports(folder: Path) -> dict[str, str]:
    """Top-level module of every absolute ``import``/``from`` in ``folder``'s Python files -> one file
    importing it."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], str(path.relative_to(REPO)))
    return found


def _undeclared(folder: Path, declared: set[str]) -> list[str]:
    """Third-party imports of ``folder`` that no declared distribution provides (the standard library,
    ``geosapiens`` and the scripts of ``tests/`` and ``benchmarks/``, which import each other, aside)."""
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module, where in _imports(folder).items():
        local = any((REPO / d / f"{module}.py").exists() or (REPO / d / module).is_dir() for d in SCRIPTS)
        if module in sys.stdlib_module_names or module == "geosapiens" or local:
            continue
        dists = {_name(d) for d in providers.get(module, [])}
        if not dists & declared:
            problems.append(f"{module} ({where}; installed by {sorted(dists) or 'nothing'})")
    return problems


def test_every_import_of_the_package_is_a_declared_dependency():
    assert _undeclared(REPO / "src" / "geosapiens", _declared()) == []


@pytest.mark.parametrize("folder", SCRIPTS)
def test_every_import_of_the_tests_and_benchmarks_is_in_the_dev_extra(folder):
    assert _undeclared(REPO / folder, _declared(("dev",))) == []


def test_every_dependency_is_pinned_to_the_installed_version():
    requirements = [*PROJECT["dependencies"], *sum(PROJECT["optional-dependencies"].values(), [])]
    pins = [re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[a-z,]+\])?==(\S+)", r) for r in requirements]
    unpinned = [r for r, p in zip(requirements, pins, strict=True) if p is None and "geosapiens[" not in r]
    assert unpinned == []
    wrong = {p[1]: (p[2], importlib.metadata.version(p[1])) for p in pins if p is not None}
    assert {name: v for name, v in wrong.items() if v[0] != v[1]} == {}


def test_the_checkout_configs_are_the_shipped_ones():
    # configs/ is a link into the package: the README's `--config configs/uda.yaml` reads the shipped file.
    assert (REPO / "configs").is_symlink() and (REPO / "configs").resolve() == SHIPPED.resolve()
    assert SHIPPED.is_relative_to(REPO / "src" / "geosapiens")
    assert {"uda.yaml", "demo/uda.yaml", "cluster/8gpu_ddp.yaml", "priors/pose_vae.yaml"} <= set(names())


def test_configs_lists_every_shipped_config_with_its_header(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert str(SHIPPED) in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == names()
    assert "  uda.yaml " in out and "Geo-Sapiens, paper setting" in out


def test_configs_copy_writes_them_out_and_keeps_edits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "copy"]) == 0  # default: ./configs, as the README's commands name them
    copied = tmp_path / "configs"
    assert names(copied) == names()
    assert (copied / "demo/uda.yaml").read_bytes() == (SHIPPED / "demo/uda.yaml").read_bytes()
    assert main(["configs", "copy"]) == 0  # unchanged files: copied again, nothing refused
    (copied / "uda.yaml").write_text("# my edit\n")
    capsys.readouterr()
    assert main(["configs", "copy", str(copied)]) == 2
    assert "uda.yaml" in capsys.readouterr().err and (copied / "uda.yaml").read_text() == "# my edit\n"
    assert main(["configs", "copy", str(copied), "--overwrite"]) == 0
    assert (copied / "uda.yaml").read_bytes() == (SHIPPED / "uda.yaml").read_bytes()
    (tmp_path / "file").write_text("")
    assert main(["configs", "copy", str(tmp_path / "file")]) == 2


def test_a_missing_config_file_is_one_line_naming_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a wheel user's folder: no ./configs yet
    assert main(["fit", "--config", "configs/uda.yaml", "--trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "geosapiens fit: --config configs/uda.yaml: no such file; it is a config the package ships: "
        "'geosapiens configs copy' writes them to ./configs\n"
    )
    assert main(["test", "--config=mine.yaml"]) == 2
    assert "--config mine.yaml: no such file (the configs the package ships: 'geosapiens configs')" in (
        capsys.readouterr().err
    )
    inline = "{trainer: {max_steps: 1}}"  # jsonargparse's inline config: the parser's to judge
    assert missing_config(["--config", str(SHIPPED / "uda.yaml"), "--config", inline]) is None
