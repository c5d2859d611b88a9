"""The pod runner's chroot mode, its pure parts: who the command runs as, which
volumes it binds where, and the runner refusing a --rootfs that cannot work.
(The chroot itself runs in tests/e2e/test_image_e2e.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lightkube.models.core_v1 import (
    Container,
    PodSecurityContext,
    PodSpec,
    SecurityContext,
    VolumeMount,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from agentarmy.devcluster import podchroot, podrunner


def pod(security: PodSecurityContext | None, container: Container) -> Pod:
    return Pod(
        metadata=ObjectMeta(name="a", namespace="n"),
        spec=PodSpec(containers=[container], securityContext=security),
    )


@pytest.mark.parametrize(
    ("pod_sc", "container_sc", "expected"),
    [
        (None, None, (65532, 65532, [])),
        (PodSecurityContext(runAsUser=1000, fsGroup=2000), None, (1000, 1000, [2000])),
        (
            PodSecurityContext(runAsUser=1000, runAsGroup=3000, supplementalGroups=[5, 5]),
            SecurityContext(runAsUser=4000),
            (4000, 3000, [5]),
        ),
    ],
    ids=["image-default", "pod-level", "container-wins"],
)
def test_identity_from_security_contexts(
    pod_sc: PodSecurityContext | None,
    container_sc: SecurityContext | None,
    expected: tuple[int, int, list[int]],
) -> None:
    container = Container(name="c", securityContext=container_sc)
    assert podchroot.pod_identity(pod(pod_sc, container), container) == expected


def test_command_binds_volumes_at_their_mount_paths() -> None:
    container = Container(
        name="c",
        workingDir="/work",
        securityContext=SecurityContext(readOnlyRootFilesystem=True),
        volumeMounts=[
            VolumeMount(name="tmp", mountPath="/tmp"),
            VolumeMount(name="token", mountPath="/var/run/secrets/x/", readOnly=True),
        ],
    )
    mounts = [("/var/run/secrets/x", Path("/p/token")), ("/tmp", Path("/p/tmp"))]
    argv = podchroot.command(
        Path("/img"),
        Path("/p/root"),
        pod(PodSecurityContext(runAsUser=7), container),
        container,
        mounts,
        ["armyctl", "agent"],
    )
    assert argv == [
        sys.executable,
        "-I",
        "-m",
        "agentarmy.devcluster.podchroot",
        "--rootfs=/img",
        "--scratch=/p/root",
        "--user=7:7",
        "--bind=/p/token:/var/run/secrets/x:ro",
        "--bind=/p/tmp:/tmp",
        "--read-only",
        "--workdir=/work",
        "--",
        "armyctl",
        "agent",
    ]
    assert podchroot.build_parser().parse_args(argv[4:]).binds == [
        podchroot.Bind(Path("/p/token"), "/var/run/secrets/x", True),
        podchroot.Bind(Path("/p/tmp"), "/tmp", False),
    ]


def test_pod_env_over_the_image_defaults_and_nothing_of_the_host() -> None:
    env = podchroot.environment({"A": "1", "PATH": "/opt/bin"}, "pod-a")
    assert env == {"PATH": "/opt/bin", "HOSTNAME": "pod-a", "A": "1"}
    assert podchroot.environment({}, "p")["PATH"] == podchroot.IMAGE_PATH


def test_bad_bind_is_refused_naming_the_flag() -> None:
    with pytest.raises(SystemExit):
        podchroot.build_parser().parse_args(["--rootfs=/r", "--scratch=/s", "--bind=x:rel", "c"])


def test_runner_refuses_a_rootfs_that_is_no_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        podrunner.main(["--kubeconfig", str(tmp_path / "kc"), "--rootfs", str(tmp_path)])
    assert "not an unpacked image (no usr/bin in it)" in capsys.readouterr().err
