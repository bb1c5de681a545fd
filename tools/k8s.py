"""`ledgergate k8s render`: the Kubernetes manifests in deploy/k8s/, generated so they cannot drift from
the code: the processes from tools/run.py, the topics from schemas/topics.yaml (Strimzi `KafkaTopic`
resources, one source of truth), the probes from the health endpoints every process serves, the
resource requests from the bench's figures. tests/unit/test_k8s.py checks the committed files equal
what this renders and validates them against the Kubernetes schemas.

Stream processes run as StatefulSets: a pod's stable name (`router-0`, `router-1`) is its
LEDGERGATE_INSTANCE_ID, so a restarted pod keeps its transactional id and fences what its predecessor
left open (docs/decisions/0004). The API and the proxy are stateless, Deployments behind a Service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ledgergate.shared.kafka.provision import load_specs
from ledgergate.shared.settings import PROJECT_ROOT
from ledgergate.tools.monitoring import HEALTH_PORT, HTTP_PORTS

OUT_DIR = PROJECT_ROOT / "deploy" / "k8s"
NAMESPACE = "ledgergate"
IMAGE = "ledgergate:0.1.0"
KAFKA_CLUSTER = "ledgergate"  # the Strimzi Kafka resource the topics belong to
# schemas/topics.yaml is sized for the one-broker dev stack; a production cluster keeps three copies and
# acknowledges a write (acks=all) once two have it.
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = "2"
# The stateless HTTP processes, Deployments behind a Service: name -> (port, its host and port variables).
HTTP = {name: (port, f"LEDGERGATE_{name.upper()}") for name, port in HTTP_PORTS.items()}
REPLICAS = 2  # of each stream process; the topics' partition count (12) allows up to 12
# Requests from `make bench` (BENCHMARKS.md): CPU for about 250 decisions/s per instance at the measured
# 0.4-0.9 ms per decision, memory the peak RSS with headroom (token-counter 211 MB: the tokenizer ranks).
RESOURCES: dict[str, tuple[str, str, str]] = {  # process: (cpu request, memory request, memory limit)
    "token-counter": ("250m", "320Mi", "512Mi"),
    # The two that hold every tenant of their partitions (and the snapshotter, below): `ledgergate bench
    # restart` measured 480-490 MB RSS each for 10,000 tenants with two months of request ids; the
    # memory bench 904 MB for a million light tenants (50,000 unpacked). Size by tenants and their rates.
    "policy": ("150m", "512Mi", "1536Mi"),
    "budget-manager": ("150m", "512Mi", "1536Mi"),
    "router": ("150m", "128Mi", "256Mi"),
    "projector": ("100m", "128Mi", "256Mi"),
    "alerter": ("50m", "96Mi", "192Mi"),
    "snapshotter": ("100m", "512Mi", "1536Mi"),
    # A faust app (services/anomaly/): its tables hold a band per series and the open windows; not measured
    # under load yet, sized like the alerter's plus faust's own ~100 MB.
    "anomaly": ("100m", "192Mi", "384Mi"),
    "api": ("100m", "160Mi", "320Mi"),
    # The OpenAI-compatible gateway: relays bodies and streams; CPU scales with calls, not tenants.
    "proxy": ("200m", "192Mi", "384Mi"),
}
STREAM = ("token-counter", "policy", "budget-manager", "router", "projector", "alerter", "snapshotter", "anomaly")
# The credential master key (every signing credential's secret derives from it) reaches only the two
# processes that need it, from a Secret of its own, not the `ledgergate` Secret every process loads.
MASTER_KEY_SECRET = "ledgergate-credential-master-key"
MASTER_KEY_HOLDERS = ("token-counter", "api")


def _master_key_env(name: str) -> list[dict[str, Any]]:
    if name not in MASTER_KEY_HOLDERS:
        return []
    return [{"name": "LEDGERGATE_CREDENTIAL_MASTER_KEY", "valueFrom": {"secretKeyRef": {
        "name": MASTER_KEY_SECRET, "key": "master-key", "optional": True}}}]


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "ledgergate"}


def _container(name: str, port: int, env: list[dict[str, Any]]) -> dict[str, Any]:
    cpu, memory, memory_limit = RESOURCES[name]
    probe_port = "health" if name in STREAM else "http"
    return {
        "name": name, "image": IMAGE, "command": ["ledgergate", "run", name],
        "envFrom": [{"configMapRef": {"name": "ledgergate"}}, {"secretRef": {"name": "ledgergate", "optional": True}}],
        "env": env,
        "ports": [{"name": probe_port, "containerPort": port}],
        # /healthz: the loop turns; /readyz: also no waiting input left unconsumed, no fatal error
        # (shared/health.py). The process exits by itself when wedged, so liveness is a second line.
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": probe_port}, "periodSeconds": 5,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": probe_port}, "periodSeconds": 10,
                          "failureThreshold": 6, "initialDelaySeconds": 30},
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": False},
    }


def _scraped(port: int) -> dict[str, str]:
    """The pod annotations Prometheus' usual Kubernetes discovery reads: every process serves GET /metrics."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _stream(name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "LEDGERGATE_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LEDGERGATE_HEALTH_HOST", "value": "0.0.0.0"},
        {"name": "LEDGERGATE_HEALTH_PORT", "value": str(HEALTH_PORT)}, *_master_key_env(name)]
    meta = {"name": name, "namespace": NAMESPACE, "labels": _labels(name)}
    selector = {"matchLabels": _labels(name)}
    return [
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": {
            "serviceName": name, "replicas": 1 if name == "alerter" else REPLICAS, "selector": selector,
            # Pods start and stop in parallel: ordering buys nothing, the consumer group rebalances anyway.
            "podManagementPolicy": "Parallel",
            "template": {"metadata": {"labels": _labels(name), "annotations": _scraped(HEALTH_PORT)}, "spec": {
                # Below SIGTERM's 20 s shutdown deadline plus slack (LEDGERGATE_SHUTDOWN_TIMEOUT_MS).
                "terminationGracePeriodSeconds": 30,
                "containers": [_container(name, HEALTH_PORT, env)]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "clusterIP": "None", "selector": _labels(name), "ports": [{"name": "health", "port": HEALTH_PORT}]}},
        _pdb(name),
    ]


def _http(name: str) -> list[dict[str, Any]]:
    port, prefix = HTTP[name]
    meta = {"name": name, "namespace": NAMESPACE, "labels": _labels(name)}
    env: list[dict[str, Any]] = [{"name": f"{prefix}_HOST", "value": "0.0.0.0"},
                                 {"name": f"{prefix}_PORT", "value": str(port)}, *_master_key_env(name)]
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": REPLICAS, "selector": {"matchLabels": _labels(name)},
            "template": {"metadata": {"labels": _labels(name), "annotations": _scraped(port)}, "spec": {
                "terminationGracePeriodSeconds": 30, "containers": [_container(name, port, env)]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "selector": _labels(name), "ports": [{"name": "http", "port": port, "targetPort": "http"}]}},
        _pdb(name),
    ]


def _pdb(name: str) -> dict[str, Any]:
    # One pod at a time: a drain never takes every owner of a partition at once.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": _labels(name)},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}}}


def _config() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ledgergate", "namespace": NAMESPACE},
         # What carries a credential (LEDGERGATE_PG_DSN for the projector, the API and anomaly,
         # LEDGERGATE_ALERT_WEBHOOK_URL and _SECRET for the alerter) goes in the Secret `ledgergate`; the
         # credential master key in its own Secret (MASTER_KEY_SECRET, key `master-key`).
         "data": {"LEDGERGATE_KAFKA_BOOTSTRAP": f"{KAFKA_CLUSTER}-kafka-bootstrap:9092"}},
    ]


def _topics() -> list[dict[str, Any]]:
    """schemas/topics.yaml as Strimzi KafkaTopic resources (the Topic Operator creates and reconciles them)."""
    return [{"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic",
             "metadata": {"name": spec.name.replace(".", "-"), "namespace": NAMESPACE,
                          "labels": {"strimzi.io/cluster": KAFKA_CLUSTER}},
             "spec": {"topicName": spec.name, "partitions": spec.partitions,
                      "replicas": max(REPLICATION_FACTOR, spec.replication_factor),
                      "config": {**spec.config, "min.insync.replicas": MIN_INSYNC_REPLICAS}}}
            for spec in load_specs()]


def render() -> dict[str, str]:
    """File name -> YAML text (several documents each)."""
    processes = [doc for name in STREAM for doc in _stream(name)]
    files = {"00-config.yaml": _config(), "10-topics.yaml": _topics(), "20-processes.yaml": processes,
             "30-api.yaml": _http("api"), "40-proxy.yaml": _http("proxy")}
    header = "# Generated by `ledgergate k8s render` (tools/k8s.py); do not edit by hand.\n"
    return {name: header + yaml.safe_dump_all(docs, sort_keys=False, width=120) for name, docs in files.items()}


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written
