"""The binary cache: only complete, unchanged builds are reused; errors say what to do."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from agentarmy.devcluster import binaries
from agentarmy.devcluster.binaries import BinaryError, Component
from agentarmy.devcluster.cluster import ClusterError, require_free_port


@pytest.fixture
def component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Component:
    monkeypatch.setenv("AGENTARMY_CACHE", str(tmp_path))
    built = Component("tool", "v1.0.0", ("tool-a", "tool-b"))
    built.directory.mkdir(parents=True)
    for name in built.binaries:
        built.path(name).write_bytes(b"#!/bin/sh\necho " + name.encode() + b"\n")
    return built


def test_sealed_build_is_complete(component: Component) -> None:
    component.seal()
    assert component.is_complete()


def test_build_without_marker_is_not_reused(component: Component) -> None:
    assert not component.is_complete()


def test_half_written_binary_is_detected(component: Component) -> None:
    component.seal()
    component.path("tool-b").write_bytes(b"#!/bin/sh\nec")  # truncated after sealing
    assert not component.is_complete()


def test_missing_binary_is_detected(component: Component) -> None:
    component.seal()
    component.path("tool-a").unlink()
    assert not component.is_complete()


def test_other_version_is_not_reused(component: Component) -> None:
    component.seal()
    newer = Component("tool", "v1.0.1", component.binaries)
    assert not newer.is_complete()


def test_missing_go_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTARMY_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BinaryError, match="install Go"):
        binaries.build_etcd()


def test_taken_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} for kube-apiserver is already taken"):
            require_free_port(port, "kube-apiserver")


def test_a_long_go_step_ticks_with_the_time_elapsed(
    component: Component, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(binaries, "TICK_SECONDS", 0.01)  # `go list std` takes ~0.5 s
    stdout = binaries._run_go(["list", "std"], tmp_path, "listing the library", component)
    assert "net/http" in stdout.split()
    said = capsys.readouterr().err
    assert "[agentarmy]   go list: listing the library" in said
    assert "[agentarmy]   listing the library: 0s elapsed" in said
    assert "$ go list std" in binaries.build_log(component).read_text()


def test_a_failed_go_step_names_its_log_and_last_lines(
    component: Component, tmp_path: Path
) -> None:
    log = binaries.build_log(component)
    with pytest.raises(BinaryError, match='no such tool "no-such-tool"') as failed:
        binaries._run_go(["tool", "no-such-tool"], tmp_path, "running a tool", component)
    assert f"full output in {log}" in str(failed.value)


def test_ensure_builds_once_then_reports_the_cache(
    component: Component, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    builds: list[str] = []

    def build() -> None:
        builds.append(component.name)
        for name in component.binaries:
            component.path(name).write_bytes(b"built\n")

    monkeypatch.setitem(binaries.BUILDERS, component.name, (component, build))
    assert binaries.ensure([component.name]) == [component.name]
    assert "building tool v1.0.0" in capsys.readouterr().err
    assert binaries.ensure([component.name]) == []  # complete: checked, not rebuilt
    assert builds == [component.name]


def test_cluster_build_without_arguments_builds_everything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`armyctl cluster build` alone used to fail in argparse (a list default checked
    against choices as one value)."""
    from agentarmy.cli.main import main

    asked: list[list[str]] = []
    monkeypatch.setattr(binaries, "ensure", lambda names: asked.append(list(names)) or set())
    assert main(["cluster", "build"]) == 0
    assert asked == [sorted(binaries.BUILDERS)]
    printed = capsys.readouterr().out
    assert all(f"{name} " in printed for name in binaries.BUILDERS), printed
    assert main(["cluster", "build", "etcd"]) == 0
    assert asked[-1] == ["etcd"]
