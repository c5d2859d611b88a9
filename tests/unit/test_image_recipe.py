"""agent-image/Dockerfile (for people with docker) and hack/build-image (buildah,
run here) must install the same thing: the same shared lists and install script,
the same Debian suite and Python, user, entrypoint, command and environment.
Both files are parsed; the built image itself is compared in
tests/integration/test_image.py."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agentarmy.devcluster import podchroot
from agentarmy.operator import pods

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "agent-image" / "Dockerfile"
BUILD_SCRIPT = REPO / "hack" / "build-image"
CONSTRAINTS = REPO / "agent-image" / "constraints.txt"
SHARED = (
    "agent-image/constraints.txt",
    "agent-image/debian-packages.txt",
    "agent-image/install.sh",
)


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """Instructions (keyword, arguments) per build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(rest.split())))
    return stages


def dockerfile_config(path: Path = DOCKERFILE) -> dict[str, object]:
    """The final stage's image config: User, Entrypoint, Cmd and Env, as an OCI config names them."""
    config: dict[str, object] = {"Env": {}}
    for keyword, args in dockerfile_stages(path)[-1]:
        if keyword == "USER":
            config["User"] = args
        elif keyword in ("ENTRYPOINT", "CMD"):
            config[keyword.title()] = json.loads(args)
        elif keyword == "ENV":
            env = config["Env"]
            assert isinstance(env, dict)
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return config


def script_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", BUILD_SCRIPT.read_text(), re.MULTILINE)
    assert match, f"hack/build-image sets no {name}="
    return match.group(1)


def script_config() -> dict[str, object]:
    """What hack/build-image's `buildah config` sets, its variables filled in."""
    text = BUILD_SCRIPT.read_text()
    call = re.search(r'"\$\{buildah\[@\]\}" config \\\n(.*?)"\$container"', text, re.DOTALL)
    assert call, "hack/build-image runs no `buildah config`"
    uid = script_value("uid")
    words = shlex.split(call.group(1).replace("\\\n", " ").replace("$uid", uid))
    options: dict[str, list[str]] = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        options.setdefault(flag, []).append(value)
    return {
        "User": options["--user"][0],
        "Entrypoint": json.loads(options["--entrypoint"][0]),
        "Cmd": json.loads(options["--cmd"][0]),
        "Env": dict(pair.split("=", 1) for pair in options["--env"]),
    }


def pinned(path: Path = CONSTRAINTS) -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_both_install_from_the_shared_lists_and_script() -> None:
    copied = " ".join(args for stage in dockerfile_stages() for kw, args in stage if kw == "COPY")
    script = BUILD_SCRIPT.read_text()
    for shared in SHARED:
        assert shared in copied, f"the Dockerfile does not COPY {shared}"
        assert shared in script, f"hack/build-image does not use {shared}"
    runs = [args for kw, args in dockerfile_stages()[-1] if kw == "RUN"]
    assert any("sh /tmp/install.sh /tmp/agentarmy-wheels" in run for run in runs)
    assert "sh /tmp/agentarmy-install.sh /tmp/agentarmy-wheels" in script
    # the same wheel set: binary wheels only, of the agentarmy wheel under the constraints
    wheel_stage = " ".join(args for kw, args in dockerfile_stages()[0] if kw == "RUN")
    for fragment in ("--only-binary=:all:", "--constraint agent-image/constraints.txt"):
        assert fragment in wheel_stage and fragment in script, fragment


def test_same_debian_suite_and_python() -> None:
    suite, python = script_value("suite"), script_value("pyver")
    bases = [args for stage in dockerfile_stages() for kw, args in stage if kw == "FROM"]
    assert bases[0] == f"python:{python}-slim-{suite} AS wheels", bases
    assert bases[-1] == f"debian:{suite}-slim", bases
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == f">={python}", "the image's Python is the oldest agentarmy supports"


def test_same_user_entrypoint_command_and_environment() -> None:
    docker, buildah = dockerfile_config(), script_config()
    env = buildah["Env"]
    assert isinstance(env, dict)
    # debian:*-slim brings this PATH; the buildah image, from scratch, sets it itself
    assert env.pop("PATH") == podchroot.IMAGE_PATH
    assert docker == buildah
    user = f"{podchroot.IMAGE_USER}:{podchroot.IMAGE_USER}"
    assert docker["User"] == user == f"{pods.RUN_AS}:{pods.RUN_AS}"
    assert docker["Entrypoint"] == pods.AGENT_COMMAND[:1]
    assert docker["Cmd"] == pods.AGENT_COMMAND[1:]


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = pinned()
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} (pyproject.toml) is not in constraints.txt"
        assert requirement.specifier.contains(pins[name]), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {spec!r}"
        )
    dev = {canonicalize_name(Requirement(s).name) for s in project["optional-dependencies"]["dev"]}
    assert not dev & set(pins), f"dev tools in the image's constraints: {sorted(dev & set(pins))}"
