"""A Fleet's egress NetworkPolicy: the pure renderer, and keeping it in step (fake API)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from lightkube import codecs

from agentarmy.api.agent import AgentSpec
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.policy import PolicySpec
from agentarmy.operator import labels
from agentarmy.operator.cache import FleetView
from agentarmy.operator.egress import EgressConflict, EgressSync, up_to_date
from agentarmy.operator.netpol import RouterPeer, policy_name, render_network_policy
from agentarmy.operator.pods import PodContext, render_pod
from agentarmy.policy import NamedPolicy, PolicySet, effective_rules, fleet_subject
from agentarmy.policy.effective import Egress

NS = "team-a"
ROUTER = RouterPeer("agentarmy-system", "http://agentarmy-router.agentarmy-system.svc:8080")

ROUTER_RULE = {
    "to": [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "agentarmy-system"}
            },
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "agentarmy-router"}},
        }
    ],
    "ports": [{"protocol": "TCP", "port": 8080}],
}
DNS_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def egress(
    cidrs: tuple[str, ...] = ("10.0.0.0/8",),
    ports: tuple[int, ...] = (443,),
    dns: bool = True,
    policies: tuple[str, ...] = (f"{NS}/baseline",),
) -> Egress:
    return Egress(cidrs, ports, dns, policies)


def render(rules: Egress, router: RouterPeer = ROUTER) -> dict[str, Any]:
    return render_network_policy("crew", NS, "uid-1", rules, router)


def test_the_whole_object() -> None:
    assert render(egress()) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "crew-egress",
            "namespace": NS,
            "labels": {
                "agentarmy.io/fleet": "crew",
                "app.kubernetes.io/managed-by": "agentarmy-operator",
            },
            "annotations": {"agentarmy.io/policies": f"{NS}/baseline"},
            "ownerReferences": [
                {
                    "apiVersion": "agentarmy.io/v1alpha1",
                    "kind": "Fleet",
                    "name": "crew",
                    "uid": "uid-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "agentarmy.io/fleet": "crew",
                    "app.kubernetes.io/managed-by": "agentarmy-operator",
                }
            },
            "policyTypes": ["Egress"],
            "egress": [
                ROUTER_RULE,
                DNS_RULE,
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                    "ports": [{"protocol": "TCP", "port": 443}],
                },
            ],
        },
    }


def test_selects_the_pods_the_operator_labels_for_the_fleet() -> None:
    pod = render_pod(
        "crew-abc-0",
        NS,
        "u",
        {labels.FLEET: "crew"},
        AgentSpec.model_validate({"capabilities": ["echo"]}),
        PodContext("http://router:8080"),
    )
    selector = render(egress())["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


def test_without_dns_only_router_and_allow_list() -> None:
    rules = render(egress(dns=False))["spec"]["egress"]
    assert DNS_RULE not in rules
    assert rules[0] == ROUTER_RULE
    assert len(rules) == 2


def test_many_cidrs_and_ports_share_one_rule_canonical_and_sorted() -> None:
    rules = render(
        egress(cidrs=("192.168.1.0/24", "2001:DB8::/32", "10.0.0.0/8"), ports=(8443, 443))
    )
    allow = rules["spec"]["egress"][-1]
    assert allow == {
        "to": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}},
            {"ipBlock": {"cidr": "192.168.1.0/24"}},
            {"ipBlock": {"cidr": "2001:db8::/32"}},
        ],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}],
    }


@pytest.mark.parametrize(("cidrs", "ports"), [((), (443,)), (("10.0.0.0/8",), ()), ((), ())])
def test_nothing_allowed_renders_no_allow_rule(
    cidrs: tuple[str, ...], ports: tuple[int, ...]
) -> None:
    # An empty ports list would mean every port to a NetworkPolicy: never render one.
    rules = render(egress(cidrs=cidrs, ports=ports))["spec"]["egress"]
    assert rules == [ROUTER_RULE, DNS_RULE]
    assert all(rule.get("ports") for rule in rules)


def test_router_by_ip_is_allowed_too_loopback_is_not() -> None:
    outside = render(egress(dns=False), RouterPeer("ops", "https://203.0.113.7:9443"))
    assert outside["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}],
        "ports": [{"protocol": "TCP", "port": 9443}],
    }
    default_port = render(egress(dns=False), RouterPeer("ops", "http://[2001:db8::1]/"))
    assert default_port["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "2001:db8::1/128"}}]
    assert default_port["spec"]["egress"][1]["ports"] == [{"protocol": "TCP", "port": 80}]
    local = render(egress(dns=False), RouterPeer("ops", "http://127.0.0.1:8080"))
    assert len(local["spec"]["egress"]) == 2  # router pods + allow-list


def test_router_pods_in_the_operator_namespace() -> None:
    rule = render(egress(), RouterPeer("platform"))["spec"]["egress"][0]
    assert rule["to"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "platform"}
    }


def test_name_stays_a_dns_label_for_the_longest_fleet() -> None:
    assert len(policy_name("f" * 52)) <= 63


def test_is_a_valid_networkpolicy_that_round_trips() -> None:
    body = render(egress(cidrs=("10.0.0.0/8", "fd00::/8"), ports=(443, 80)))
    assert codecs.from_dict(body).to_dict() == body


def test_from_policies_strictest_wins() -> None:
    def policy(name: str, mode: str = "enforce", **rule: Any) -> NamedPolicy:
        return NamedPolicy(
            NS, name, PolicySpec.model_validate({"mode": mode, "rules": {"egress": rule}})
        )

    policies = PolicySet(
        [
            policy("wide", cidrs=["10.0.0.0/8", "172.16.0.0/12"], ports=[443, 80]),
            policy("narrow", cidrs=["10.1.0.0/16"], ports=[443], allowDNS=False),
            policy("audit-only", mode="audit", cidrs=["192.168.0.0/16"]),
        ]
    )
    spec = FleetSpec.model_validate(
        {"replicas": 1, "template": {"spec": {"capabilities": ["echo"]}}}
    )
    subject = fleet_subject(NS, "crew", {}, spec)
    rules = effective_rules(policies, NS, subject.label_sets).enforced.egress
    assert rules is not None
    body = render(rules)
    assert body["spec"]["egress"] == [
        ROUTER_RULE,
        {
            "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        },
    ]
    assert body["metadata"]["annotations"] == {"agentarmy.io/policies": f"{NS}/narrow,{NS}/wide"}


# --- keeping it in step ---------------------------------------------------------------------


class FakeKube:
    """The API as EgressSync uses it; the server adds what a real one adds."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.version = 0

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        stored["metadata"].setdefault("uid", "np-uid")
        return stored

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def create(self, body: dict[str, Any]) -> bool:
        self.calls.append("create")
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.objects:
            return False
        self.objects[key] = self._stored(body)
        return True

    async def replace(self, body: dict[str, Any]) -> None:
        self.calls.append("update")
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        assert (
            body["metadata"]["resourceVersion"] == self.objects[key]["metadata"]["resourceVersion"]
        )
        self.objects[key] = self._stored(body)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.calls.append("delete")
        return self.objects.pop((namespace, name), None) is not None

    async def event(self, involved: dict[str, str], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(uid: str = "uid-1") -> FleetView:
    return FleetView(NS, "crew", uid, "1", 1, False, {}, {}, {})


def syncer() -> tuple[EgressSync, FakeKube, Clock]:
    kube, clock = FakeKube(), Clock()
    return EgressSync(kube, ROUTER, resync=300, clock=clock), kube, clock  # type: ignore[arg-type]


async def test_created_once_then_no_calls_until_resync() -> None:
    sync, kube, clock = syncer()
    assert await sync.sync(fleet(), egress()) == 300
    assert kube.calls == ["get", "create"]
    assert kube.events == [("Normal", "EgressPolicyCreated")]
    stored = kube.objects[(NS, "crew-egress")]
    assert up_to_date(stored, render(egress()))
    clock.now += 10
    assert await sync.sync(fleet(), egress()) == 290
    assert kube.calls == ["get", "create"]  # known and unchanged: no API call
    clock.now += 300
    assert await sync.sync(fleet(), egress()) == 300
    assert kube.calls == ["get", "create", "get"]  # read back, nothing to write


async def test_tightened_rules_replace_it_and_keep_others_labels() -> None:
    sync, kube, _ = syncer()
    await sync.sync(fleet(), egress())
    kube.objects[(NS, "crew-egress")]["metadata"]["labels"]["team"] = "a"
    await sync.sync(fleet(), egress(cidrs=("10.1.0.0/16",), dns=False))
    assert kube.calls[-2:] == ["get", "update"]
    stored = kube.objects[(NS, "crew-egress")]
    assert stored["metadata"]["labels"]["team"] == "a"
    assert stored["spec"] == render(egress(cidrs=("10.1.0.0/16",), dns=False))["spec"]
    assert kube.events[-1] == ("Normal", "EgressPolicyUpdated")


async def test_no_egress_deletes_ours_once() -> None:
    sync, kube, _ = syncer()
    await sync.sync(fleet(), egress())
    assert await sync.sync(fleet(), None) is None
    assert (NS, "crew-egress") not in kube.objects
    assert kube.events[-1] == ("Normal", "EgressPolicyDeleted")
    calls = len(kube.calls)
    assert await sync.sync(fleet(), None) is None
    assert len(kube.calls) == calls  # confirmed absent: no more reads


async def test_after_a_restart_a_left_over_one_is_deleted() -> None:
    sync, kube, _ = syncer()
    await sync.sync(fleet(), egress())
    restarted = EgressSync(kube, ROUTER)  # type: ignore[arg-type]
    await restarted.sync(fleet(), None)
    assert kube.objects == {}


async def test_hand_edits_are_undone_at_resync() -> None:
    sync, kube, clock = syncer()
    await sync.sync(fleet(), egress())
    kube.objects[(NS, "crew-egress")]["spec"]["egress"] = []
    clock.now += 301
    await sync.sync(fleet(), egress())
    assert kube.objects[(NS, "crew-egress")]["spec"] == render(egress())["spec"]
    del kube.objects[(NS, "crew-egress")]
    clock.now += 301
    await sync.sync(fleet(), egress())
    assert (NS, "crew-egress") in kube.objects


async def test_a_recreated_fleet_adopts_the_one_its_predecessor_left() -> None:
    sync, kube, _ = syncer()
    await sync.sync(fleet("old"), egress())
    await sync.sync(fleet("new"), egress())
    owner = kube.objects[(NS, "crew-egress")]["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owner] == ["new"]


async def test_ones_it_does_not_own_are_left_alone() -> None:
    sync, kube, _ = syncer()
    foreign = render(egress())
    foreign["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x", "uid": "d", "controller": True}
    ]
    kube.objects[(NS, "crew-egress")] = foreign
    with pytest.raises(EgressConflict, match="controlled by"):
        await sync.sync(fleet(), egress())
    with pytest.raises(EgressConflict):
        await sync.sync(fleet(), egress())
    assert kube.events == [("Warning", "EgressPolicyConflict")]  # told once
    assert "update" not in kube.calls
    await sync.sync(fleet(), None)  # no egress: not ours to delete
    assert (NS, "crew-egress") in kube.objects
