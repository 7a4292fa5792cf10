"""The client extra asks for ranges (it is embedded in other services); constraints.txt pins
every dependency exactly, for the images, CI and `make`; the two must agree. The wheel is what
the images install, so what it holds is checked too."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]


def _requirements() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    return {name: [Requirement(r) for r in reqs] for name, reqs in groups.items()}


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact pin"
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    return pins


def test_every_dependency_has_an_exact_pin_that_its_range_allows():
    pins = _constraints()
    for group, requirements in _requirements().items():
        for requirement in requirements:
            name = requirement.name.lower().replace("_", "-")
            if name == "mnist-serving":
                continue
            if name not in pins:
                # tools only the dev extra installs (linters, validators) are pinned in place
                assert group == "dev" and any(s.operator == "==" for s in requirement.specifier), name
                continue
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"[{group}] {requirement} does not allow constraints.txt's {name}=={pins[name]}"
            )


def test_the_client_extra_and_the_base_take_ranges_not_pins():
    requirements = _requirements()
    for requirement in [*requirements["base"], *requirements["client"]]:
        assert all(s.operator != "==" for s in requirement.specifier), f"{requirement} is pinned"
        assert any(s.operator == "<" for s in requirement.specifier), f"{requirement} has no upper bound"


def test_the_fixture_model_key_covers_what_training_and_export_import_from_common():
    """The test suite keeps its trained fixture model keyed by the code it depends on
    (tests/conftest.py): every common module that train/ and export/ reach is in the key."""
    import re

    from tests.conftest import FIXTURE_COMMON_MODULES

    pattern = re.compile(r"from mnist_serving\.common(?:\.(\w+))? import (\w+)")
    todo = [*(ROOT / "train").rglob("*.py"), *(ROOT / "export").rglob("*.py")]
    reached: set[str] = set()
    while todo:
        for module, name in pattern.findall(todo.pop().read_text()):
            found = module or name
            if found not in reached:
                reached.add(found)
                todo.append(ROOT / "common" / f"{found}.py")
    assert reached == set(FIXTURE_COMMON_MODULES)


def test_the_wheel_installs_only_the_namespace_and_carries_its_data_files(tmp_path):
    """The images install the wheel, not the checkout: the drawing page, the .proto files and
    the upstream protocol's licence must travel in it, and no generic top-level name may."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in folders.values():
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-qw", tmp_path, source],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "BuildBackendWarning" not in built.stderr, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("mnist_serving-*.whl")
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"{dist_info}/entry_points.txt")
    assert {n.split("/")[0] for n in names} == {"mnist_serving", dist_info}
    for data in (
        "server/page/index.html",
        "server/page/app.js",
        "server/page/style.css",
        "protos/inference/grpc_service.proto",
        "protos/inference/model_config.proto",
        "protos/inference/LICENSE",
        "protos/mnist/v1/classifier.proto",
    ):
        assert f"mnist_serving/{data}" in names, data
    for script in ("mnist-train", "mnist-export", "mnist-serve", "mnist-classify"):
        assert f"{script} = ".encode() in entry_points, script
