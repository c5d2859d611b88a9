"""The agentarmy image that hack/build-image makes (or reuses from its cache):
loaded from its OCI layout into a fresh buildah store, `armyctl --version` runs
in it as the image's non-root user, no pip or compiler is in it, its config is
the Dockerfile's, and it holds exactly the pinned Python packages."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from tests.unit.test_image_recipe import dockerfile_config, pinned

pytestmark = pytest.mark.integration

SIZE_GOAL_BYTES = 200_000_000
BUILD_TOOLS = ("pip", "pip3", "gcc", "cc", "c++", "g++", "clang", "make", "apt-get")


def manifest(image: Path) -> dict[str, Any]:
    info = json.loads((image / "image.json").read_text())
    return dict(info)


class Buildah:
    """buildah on a throwaway vfs store, so the test never touches the build's cache."""

    def __init__(self, store: Path) -> None:
        self.base = [
            "buildah",
            f"--root={store / 'storage'}",
            f"--runroot={store / 'run'}",
            "--storage-driver=vfs",
        ]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=300, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)} failed:\n{done.stderr}")
        return done


@pytest.fixture(scope="module")
def container(
    agent_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Buildah, str]]:
    store = tmp_path_factory.mktemp("buildah")
    buildah = Buildah(store)
    version = manifest(agent_image)["version"]
    # buildah names the image after the layout's path, which must not hold a dot-folder
    layout = store / "layout"
    layout.symlink_to(agent_image / "oci")
    name = buildah("from", "--quiet", "--name=agentarmy-image-test", f"oci:{layout}:{version}")
    name = name.stdout.strip()
    try:
        yield buildah, name
    finally:
        buildah("rm", name, check=False)
        buildah("rmi", "--all", "--force", check=False)
        shutil.rmtree(store, ignore_errors=True)


def run(container: tuple[Buildah, str], *argv: str) -> subprocess.CompletedProcess[str]:
    buildah, name = container
    return buildah("run", "--isolation=chroot", name, "--", *argv, check=False)


def test_armyctl_runs_in_the_image_as_its_non_root_user(container: tuple[Buildah, str]) -> None:
    version = run(container, "armyctl", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "armyctl 0.1.0 (agentarmy)"
    whoami = run(container, "id", "-u")
    assert whoami.stdout.strip() == "65532", "the image's configured user is not the pods' user"


def test_no_pip_and_no_compiler_in_the_image(container: tuple[Buildah, str]) -> None:
    found = run(container, "sh", "-c", " ; ".join(f"command -v {t}" for t in BUILD_TOOLS))
    assert found.stdout.split() == [], f"build tools in the image: {found.stdout.split()}"
    modules = run(
        container,
        "python3",
        "-c",
        "import importlib.util as u; "
        "print([m for m in ('pip', 'setuptools', 'wheel', 'ensurepip') if u.find_spec(m)])",
    )
    assert modules.returncode == 0, modules.stderr
    assert modules.stdout.strip() == "[]"


def test_image_config_is_the_dockerfiles(container: tuple[Buildah, str]) -> None:
    buildah, name = container
    config = json.loads(buildah("inspect", "--type=container", name).stdout)["OCIv1"]["config"]
    env = dict(pair.split("=", 1) for pair in config["Env"])
    docker = dockerfile_config()
    assert config["User"] == docker["User"]
    assert config["Entrypoint"] == docker["Entrypoint"]
    assert config["Cmd"] == docker["Cmd"]
    docker_env = docker["Env"]
    assert isinstance(docker_env, dict)
    assert docker_env.items() <= env.items()


def test_image_holds_exactly_the_pinned_packages_and_is_small(agent_image: Path) -> None:
    site = agent_image / "rootfs" / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
    installed = {}
    for dist_info in site.glob("*.dist-info"):
        metadata = (dist_info / "METADATA").read_text(errors="replace")
        fields = dict(line.split(": ", 1) for line in metadata.splitlines()[:10] if ": " in line)
        installed[canonicalize_name(fields["Name"])] = fields["Version"]
    assert installed.pop("agentarmy") == "0.1.0"
    assert installed == pinned()

    info = manifest(agent_image)
    print(
        f"\nimage {info['hash']}: {info['unpacked_bytes'] / 1e6:.0f} MB unpacked, "
        f"{info['compressed_bytes'] / 1e6:.0f} MB compressed, built in "
        f"{info['build_seconds']:.0f} s"
    )
    assert info["unpacked_bytes"] < SIZE_GOAL_BYTES, "the image outgrew its 200 MB goal"
