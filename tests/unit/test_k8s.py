"""deploy/k8s/: the committed manifests are what `ledgergate k8s render` makes from the code, they are
valid Kubernetes (kubernetes-validate's offline schemas, strict), every process is deployed once with
probes on its real health endpoints and a stable instance id, and the KafkaTopic resources are
schemas/topics.yaml. A broken copy fails the same checks, so they can fail."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import yaml

from ledgergate.shared.kafka.provision import load_specs
from ledgergate.tools import k8s
from ledgergate.tools.run import SERVICES

K8S_VERSION = kubernetes_validate.latest_version()


def _docs() -> list[dict[str, Any]]:
    return [doc for text in k8s.render().values() for doc in yaml.safe_load_all(text)]


def _problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        if doc["kind"] == "KafkaTopic":
            continue  # a Strimzi custom resource: checked against topics.yaml below
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {str(exc).splitlines()[0]}")
    return problems


def test_the_committed_manifests_are_the_rendered_ones() -> None:
    for name, text in k8s.render().items():
        assert (k8s.OUT_DIR / name).read_text() == text, f"deploy/k8s/{name} is stale: run `ledgergate k8s render`"
    assert sorted(p.name for p in k8s.OUT_DIR.glob("*.yaml")) == sorted(k8s.render())


def test_every_manifest_is_valid_kubernetes_and_a_broken_one_is_not() -> None:
    docs = _docs()
    assert _problems(docs) == []
    broken = copy.deepcopy(docs)
    workload = next(d for d in broken if d["kind"] == "StatefulSet")
    workload["spec"]["replicas"] = "two"
    probe = next(d for d in broken if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    probe["readinessProbe"]["httpGet"]["prot"] = 8080  # a typo: strict validation refuses unknown fields
    assert len(_problems(broken)) == 2


def test_every_process_runs_once_with_real_probes_and_a_stable_instance_id() -> None:
    workloads = {d["metadata"]["name"]: d for d in _docs() if d["kind"] in ("StatefulSet", "Deployment")}
    assert set(workloads) == set(SERVICES)
    for name, w in workloads.items():
        (container,) = w["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["ledgergate", "run", name]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e for e in container["env"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"]["path"] == path and container[probe]["httpGet"]["port"] in ports
        if w["kind"] == "StatefulSet":
            # The pod's stable name is its instance id: a restarted pod keeps its transactional id.
            assert env["LEDGERGATE_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert env["LEDGERGATE_HEALTH_PORT"]["value"] == str(ports["health"])
            assert env["LEDGERGATE_HEALTH_HOST"]["value"] == "0.0.0.0"
        else:
            prefix = "LEDGERGATE_" + name.upper()
            assert env[f"{prefix}_PORT"]["value"] == str(ports["http"])
            assert env[f"{prefix}_HOST"]["value"] == "0.0.0.0"
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    pdbs = {d["metadata"]["name"] for d in _docs() if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == set(SERVICES)


def test_the_kafka_topics_are_schemas_topics_yaml() -> None:
    topics = {d["spec"]["topicName"]: d for d in _docs() if d["kind"] == "KafkaTopic"}
    specs = {s.name: s for s in load_specs()}
    assert set(topics) == set(specs)
    for name, topic in topics.items():
        spec = specs[name]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == k8s.KAFKA_CLUSTER
        assert topic["spec"]["partitions"] == spec.partitions == 12
        assert topic["spec"]["replicas"] == k8s.REPLICATION_FACTOR
        assert {k: v for k, v in topic["spec"]["config"].items() if k != "min.insync.replicas"} == \
            {k: v for k, v in spec.config.items() if k != "min.insync.replicas"}
