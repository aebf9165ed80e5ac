"""The deployment manifests: every Kustomize overlay renders and validates against the Kubernetes schemas, the pods
keep the rules README "Deploying" promises (probes, sizes, non-root, network policies of the architecture's calls),
and docker-compose accepts the compose files.

kubectl and docker-compose are external tools: missing locally, these tests skip loudly; with
NEXTBEST_REQUIRE_TOOLS=1 (set by .ci/run) a missing tool fails them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cli.client import DEFAULT_PORTS
from cli.settings_doc import settings_rows

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")
#: The oldest Kubernetes the manifests must run on (native gRPC probes are GA since 1.27, CronJob timeZone 1.27).
KUBERNETES_VERSION = "1.31"
#: Who may call whom (README "Architecture"); the decision service is the front door, open to any client.
CALLERS = {"identity": {"decision", "profile"}, "profile": {"decision", "nextbest-rescore"},
           "scoring": {"decision", "nextbest-rescore"}, "inventory": {"decision"}}
CALLEES = {"decision": {"identity", "profile", "scoring", "inventory"}, "profile": {"identity"}}
#: Stateless request/response services that scale horizontally; identity and profile keep one in-process
#: change feed each, which the decision caches rely on.
AUTOSCALED = {"decision", "scoring", "inventory"}
COMPOSE_SERVICES = ("identity", "profile", "scoring", "inventory", "decision")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("NEXTBEST_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is required here (NEXTBEST_REQUIRE_TOOLS=1) but not installed")
        pytest.skip(f"{name} NOT INSTALLED: deployment manifests are NOT checked")
    return path


@functools.cache
def _rendered(kustomization: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "deploy/k8s" / kustomization)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(kustomization: str) -> tuple[dict, ...]:
    tool("kubectl")  # skip (or fail) before the cache is consulted
    return _rendered(kustomization)


def of_kind(docs, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs) -> dict[str, dict]:
    """Every pod template: Deployments, StatefulSets, Jobs and CronJobs."""
    specs = {}
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            specs[f"{doc['kind']}/{doc['metadata']['name']}"] = spec["template"]["spec"]
    return specs


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_against_the_kubernetes_schemas(kustomization):
    docs = render(kustomization)
    assert len({(d["kind"], d["metadata"]["name"]) for d in docs}) == len(docs), "duplicate resources"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kustomization}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_the_schema_check_rejects_a_misspelt_field():
    """The validation above is strict: a typo in a probe would not pass silently."""
    deployment = of_kind(render("base"), "Deployment")["decision"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    broken = {**deployment, "spec": {**deployment["spec"], "template": {"spec": {
        "containers": [{**container, "readinessProbe": {"grcp": {"port": 50050}}}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_service_is_probed_sized_and_locked_down(kustomization):
    deployments = of_kind(render(kustomization), "Deployment")
    assert set(deployments) == set(DEFAULT_PORTS)
    for name, port in DEFAULT_PORTS.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["serve", name]
        assert container["ports"] == [{"name": "grpc", "containerPort": port}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = container[probe]
            if kustomization == "overlays/prod":
                # Under mTLS kubelet's gRPC probe cannot connect: the pod's own TLS-capable probe instead.
                assert "grpc" not in handler
                assert handler["exec"]["command"] == ["python", "-m", "cli.probe", str(port)], (name, probe)
            else:
                assert handler["grpc"] == {"port": port}, (name, probe)
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, (name, bound)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_runs_non_root_on_a_read_only_root(kustomization):
    for where, pod in pod_specs(render(kustomization)).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            if where != "StatefulSet/postgres":  # the development database writes beside its data directory
                assert context["readOnlyRootFilesystem"] is True, where
                mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
                volumes = {volume["name"]: volume for volume in pod["volumes"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], where


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_network_policies_allow_only_the_architectures_calls(kustomization):
    policies = of_kind(render(kustomization), "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for name, port in DEFAULT_PORTS.items():
        spec = policies[name]["spec"]
        assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": name}}
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        callers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule.get("from", [])}
        if name == "decision":
            assert "from" not in rule  # any client may connect; TLS and API keys decide who is served
        else:
            assert callers == CALLERS[name]
        callees = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: rule["ports"][0]["port"]
            for rule in spec.get("egress", []) for peer in rule["to"]
        }
        assert callees == {callee: DEFAULT_PORTS[callee] for callee in CALLEES.get(name, ())}
    rescore = policies["nextbest-rescore"]["spec"]
    assert rescore["ingress"] == []
    assert {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: rule["ports"][0]["port"]
        for rule in rescore["egress"] for peer in rule["to"]
    } == {"profile": DEFAULT_PORTS["profile"], "scoring": DEFAULT_PORTS["scoring"]}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_only_stateless_services_autoscale_and_every_service_has_a_disruption_budget(kustomization):
    docs = render(kustomization)
    deployments = of_kind(docs, "Deployment")
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(autoscalers) == AUTOSCALED
    for name, autoscaler in autoscalers.items():
        assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in deployments[name]["spec"]  # or every apply would reset the autoscaler's count
    for name in set(DEFAULT_PORTS) - AUTOSCALED:
        assert deployments[name]["spec"]["replicas"] == 1
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == set(DEFAULT_PORTS)
    for name in set(DEFAULT_PORTS) - AUTOSCALED:
        assert budgets[name]["spec"] == {
            "maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}
        }  # a one-replica budget must not block node drains


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_jobs_migrate_and_retrain_and_services_skip_migrating(kustomization):
    docs = render(kustomization)
    (migrate,) = of_kind(docs, "Job")["nextbest-migrate"]["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    retrain = of_kind(docs, "CronJob")["nextbest-retrain"]["spec"]
    assert retrain["concurrencyPolicy"] == "Forbid"
    (train,) = retrain["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert train["args"] == ["model", "train", "offer_propensity", "--auto-promote"]
    rescore = of_kind(docs, "CronJob")["nextbest-rescore"]["spec"]
    assert rescore["concurrencyPolicy"] == "Forbid"
    (job,) = rescore["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert job["args"][:3] == ["model", "rescore", "lifetime_value"]
    assert not [source for source in job.get("envFrom", ()) if "secretRef" in source]  # no database: RPCs only
    (settings,) = [doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith(
        "nextbest-settings")]
    assert settings["data"]["NEXTBEST_MIGRATE_ON_START"] == "false"
    # Every pod reads the generated (hash-suffixed) ConfigMap, so a settings change rolls the pods.
    for where, pod in pod_specs(docs).items():
        for container in pod["containers"]:
            refs = [source["configMapRef"]["name"] for source in container.get("envFrom", ()) if "configMapRef" in source]
            assert refs in ([], [settings["metadata"]["name"]]), where


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_migration_phase_applies_everything_the_job_needs(kustomization):
    """README "Kubernetes": `kubectl apply -k … -l nextbest.io/phase=migrate` first, then the rest."""
    docs = render(kustomization)
    phase = {(doc["kind"], doc["metadata"]["name"].rsplit("-", 1)[0] if doc["kind"] in ("ConfigMap", "Secret")
              else doc["metadata"]["name"])
             for doc in docs if doc["metadata"].get("labels", {}).get("nextbest.io/phase") == "migrate"}
    generated_secrets = {("Secret", "nextbest-database")} if kustomization == "overlays/dev" else set()
    assert phase == {("Job", "nextbest-migrate"), ("ConfigMap", "nextbest-settings"), *generated_secrets}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_nextbest_pod_is_labelled_for_the_platform_egress_policy(kustomization):
    selector = of_kind(render(kustomization), "NetworkPolicy")["nextbest-platform-egress"]["spec"]["podSelector"]
    for doc in render(kustomization):
        template = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            template = template["jobTemplate"]["spec"]
        if "template" in template and doc["metadata"]["name"] != "postgres":
            labels = template["template"]["metadata"]["labels"]
            assert selector["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_settings_named_in_manifests_exist(kustomization):
    known = {variable for variable, _, _ in settings_rows()}
    for doc in render(kustomization):
        names = set(doc.get("data", {})) if doc["kind"] in ("ConfigMap", "Secret") else set()
        for pod in pod_specs([doc]).values():
            names |= {env["name"] for container in pod["containers"] for env in container.get("env", ())}
        unknown = {name for name in names if name.startswith("NEXTBEST_")} - known
        assert not unknown, f"{doc['kind']}/{doc['metadata']['name']}: no such setting {sorted(unknown)}"


def test_prod_turns_on_mutual_tls_and_api_keys():
    docs = render("overlays/prod")
    (settings,) = [doc["data"] for doc in docs if doc["kind"] == "ConfigMap"]
    assert settings["NEXTBEST_ALLOW_PLAINTEXT_BIND"] == "false"
    assert {"NEXTBEST_TLS_CERT_FILE", "NEXTBEST_TLS_KEY_FILE", "NEXTBEST_TLS_CA_FILE", "NEXTBEST_AUTH_KEYS_FILE"} <= set(
        settings)
    for name, deployment in of_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == f"nextbest-tls-{name}"
        (container,) = pod["containers"]
        mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert os.path.dirname(settings["NEXTBEST_TLS_CERT_FILE"]) in mounted
        assert os.path.dirname(settings["NEXTBEST_AUTH_KEYS_FILE"]) in mounted
        (token,) = [env for env in container["env"] if env["name"] == "NEXTBEST_AUTH_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "nextbest-auth", "key": f"{name}.token"}
    rescore = of_kind(docs, "CronJob")["nextbest-rescore"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in rescore["volumes"]}["tls"]["secret"]["secretName"] == "nextbest-tls-rescore"
    (container,) = rescore["containers"]
    assert os.path.dirname(settings["NEXTBEST_TLS_CERT_FILE"]) in {m["mountPath"] for m in container["volumeMounts"]}
    (token,) = [env for env in container["env"] if env["name"] == "NEXTBEST_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "nextbest-auth", "key": "rescore.token"}


@functools.cache
def _compose_config(files: tuple[str, ...]) -> dict:
    arguments = [tool("docker-compose"), "--project-directory", str(ROOT)]
    for file in files:
        arguments += ["-f", str(ROOT / file)]
    result = subprocess.run([*arguments, "config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def compose_config(*files: str) -> dict:
    """The merged configuration exactly as docker-compose reads it (what `docker-compose config` validates)."""
    tool("docker-compose")
    return _compose_config(files)


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "deploy/compose/tls.override.yml")])
def test_compose_files_are_valid_and_start_in_order(files):
    services = compose_config(*files)["services"]
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"
    for name in COMPOSE_SERVICES:
        service = services[name]
        assert service["command"] == ["serve", name]
        assert service["environment"]["NEXTBEST_MIGRATE_ON_START"] == "false"
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "cli.probe", str(DEFAULT_PORTS[name])]
    assert services["profile"]["depends_on"]["identity"] == {"condition": "service_healthy"}
    assert {dependency for dependency, rule in services["decision"]["depends_on"].items()
            if rule == {"condition": "service_healthy"}} >= {"identity", "profile", "scoring", "inventory"}
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "jaeger" in services["otel-collector"]["depends_on"]
    known = {variable for variable, _, _ in settings_rows()}
    for name in COMPOSE_SERVICES:
        unknown = {key for key in services[name]["environment"] if key.startswith("NEXTBEST_")} - known
        assert not unknown, f"{name}: no such setting {sorted(unknown)}"


def test_the_tls_override_gives_each_service_its_own_certificate():
    services = compose_config("docker-compose.yml", "deploy/compose/tls.override.yml")["services"]
    for name in COMPOSE_SERVICES:
        environment = services[name]["environment"]
        assert environment["NEXTBEST_TLS_CERT_FILE"] == f"/certs/{name}.pem"
        assert environment["NEXTBEST_TLS_KEY_FILE"] == f"/certs/{name}.key"
        assert environment["NEXTBEST_ALLOW_PLAINTEXT_BIND"] == "false"
