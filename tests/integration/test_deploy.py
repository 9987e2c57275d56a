"""deploy/: Kubernetes manifests, Prometheus alerts, the Grafana dashboard, and the ConfigMap reload.

Offline checks only (no cluster here): `kubectl kustomize` renders each overlay, `kubernetes-validate`
checks every rendered object against the Kubernetes schemas (strict: unknown fields fail), promtool
checks and unit-tests the alert rules, and a real gateway proves that every metric the dashboard and
the alerts use exists on /metrics and that the ConfigMap's `..data` symlink swap reloads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from kairos.config import parse_config
from tests.conftest import free_port
from ops_helpers import config, metric_value, route, wait_until

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
OVERLAYS = ["base", "overlays/dev", "overlays/production"]
K8S_VERSION = "1.33"


def _require(tool: str, in_ci: bool = True) -> str:
    """The tool's path; skipped when absent, except in CI when .ci/run installs it (in_ci)."""
    path = shutil.which(tool)
    if path is None:
        if in_ci and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{tool} not installed; CI=true requires it")
        pytest.skip(f"{tool} not installed")
    return path


def render(overlay: str) -> list[dict]:
    kubectl = _require("kubectl", in_ci=False)  # no Debian package: present where the machine image has it
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str, name: str = "kairos") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_are_valid_kubernetes_objects(overlay):
    import kubernetes_validate

    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifest_files_are_valid_kubernetes_objects_without_kubectl():
    """The same schema check on the files as written (kustomize only adds labels, names and patches)."""
    import kubernetes_validate

    files = [*(K8S / "base").glob("*.yaml"), K8S / "overlays" / "dev" / "redis.yaml"]
    files = [f for f in files if f.name != "kustomization.yaml"]
    assert len(files) == 5
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_an_unknown_field():
    import kubernetes_validate

    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_drain_and_hardening_match_the_config(overlay):
    docs = render(overlay)
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The config in the ConfigMap is a valid kairos config, and the drain timings agree with it.
    cm = by_kind(docs, "ConfigMap", "kairos-config")
    cfg = parse_config(json.loads(cm["data"]["config.json"]))
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and float(sleep[1]) == cfg.server.shutdown_delay_s
    assert pod["terminationGracePeriodSeconds"] > float(sleep[1]) + cfg.server.shutdown_delay_s + cfg.server.shutdown_timeout_s
    # The ConfigMap is mounted as a directory (subPath mounts never see updates) under an unhashed name,
    # so an edit reaches running pods as a `..data` swap and is hot-reloaded.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount and mount["mountPath"] == "/etc/kairos"
    assert "/etc/kairos/config.json" in container["args"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == "kairos-config"
    # The Service, PDB and HPA select or target this Deployment.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        obj = by_kind(docs, kind)
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    assert by_kind(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "kairos"


def test_overlays_differ_as_documented():
    dev, prod = render("overlays/dev"), render("overlays/production")
    assert by_kind(dev, "Deployment")["spec"]["replicas"] == 1
    assert by_kind(dev, "Deployment", "redis")  # dev brings its own Redis
    dev_cfg = json.loads(by_kind(dev, "ConfigMap", "kairos-config")["data"]["config.json"])
    assert dev_cfg["rate_limit"]["redis_url"] == "redis://redis:6379/0"
    assert by_kind(prod, "Deployment")["spec"]["replicas"] >= 3
    assert by_kind(prod, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3
    assert not [d for d in prod if d["metadata"]["name"] == "redis"]
    prod_cfg = json.loads(by_kind(prod, "ConfigMap", "kairos-config")["data"]["config.json"])
    assert prod_cfg["rate_limit"]["enable_redis"] is True


def test_alert_rules_pass_promtool():
    promtool = _require("promtool")
    rules = REPO / "deploy" / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=rules, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=rules, capture_output=True, text=True,
                          timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr


_METRIC = re.compile(r"\bkairos_[a-z0-9_]+")


def used_metrics() -> set[str]:
    """Every kairos_* series named by the dashboard and the alert rules, as exported families."""
    text = (REPO / "deploy" / "grafana" / "kairos-dashboard.json").read_text()
    text += (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    names = set(_METRIC.findall(text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_every_metric_of_the_dashboard_and_alerts_exists(upstream, gateway, sync_client):
    dashboard = json.loads((REPO / "deploy" / "grafana" / "kairos-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    used = used_metrics()
    assert {"kairos_requests_total", "kairos_request_duration_seconds", "kairos_circuit_breaker_state"} <= used
    gw = gateway(config(route(upstream)))
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    assert sync_client.get(gw.url + "/nowhere").status_code == 404
    exported = set(re.findall(r"^# TYPE (\S+) ", sync_client.get(gw.url + "/metrics").text, re.M))
    assert used - exported == set()
    # The gateway's own answers are counted by error kind (the "errors by kind" panel and an alert use it).
    text = sync_client.get(gw.url + "/metrics").text
    assert metric_value(text, "kairos_gateway_errors_total", route="unmatched", kind="route_not_found") == 1


def test_compose_observability_profile_is_valid():
    compose = _require("docker-compose")
    out = subprocess.run([compose, "-f", "docker-compose.yml", "--profile", "observability", "config"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"prometheus", "grafana"} <= services.keys()
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
        assert Path(source).exists(), source


def test_configmap_symlink_swap_reloads_the_gateway(make_upstream, gateway, sync_client, tmp_path):
    """Exactly what the kubelet does to a mounted ConfigMap: config.json -> ..data/config.json,
    ..data -> ..<timestamp>; an update writes a new timestamped directory, points a temporary symlink
    at it, renames that over ..data (atomic), and removes the old directory."""
    a, b = make_upstream(2)
    mount = tmp_path / "configmap"
    mount.mkdir()

    def publish(cfg: dict, stamp: str) -> None:
        version = mount / f"..{stamp}"
        version.mkdir()
        (version / "config.json").write_text(json.dumps(cfg))
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(version.name)
        os.rename(tmp_link, mount / "..data")

    publish(config(route(a)), "2026_12_03_10_00_00.1")
    (mount / "config.json").symlink_to("..data/config.json")
    gw = gateway(config(route(a)), extra_args=["--config", str(mount / "config.json")])
    r = sync_client.get(gw.url + "/api/1")
    assert r.status_code == 200 and r.headers["x-upstream"] == a.name

    publish(config(route(b), route(b, external="/new/{id}")), "2026_12_03_10_05_00.2")
    shutil.rmtree(mount / "..2026_12_03_10_00_00.1")
    gw.wait_for_log(lambda rec: rec.get("event") == "config_reloaded" and rec.get("trigger") == "file")
    r = sync_client.get(gw.url + "/api/1")
    assert r.status_code == 200 and r.headers["x-upstream"] == b.name
    assert sync_client.get(gw.url + "/new/1").status_code == 200
    assert gw.alive()


def test_configmap_example_in_the_docs_is_the_base_config():
    """docs/deploy/kubernetes.md tells users to edit deploy/kubernetes/*/config.json: each must validate."""
    for overlay in OVERLAYS:
        parse_config(json.loads((K8S / overlay / "config.json").read_text()))
    assert "kubectl kustomize deploy/kubernetes/overlays/production" in (REPO / "docs" / "deploy" / "kubernetes.md").read_text()



def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the dashboard, its variables filled as Grafana would."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "kairos-dashboard.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "15s").replace("$job", ".*").replace("$route", ".*")
            out.append((panel["title"], expr))
    return out


def test_dashboard_and_alert_queries_run_on_a_real_prometheus(upstream, gateway, sync_client, tmp_path):
    """Every panel's PromQL and every alert expression, evaluated by a real Prometheus scraping a real
    gateway: a syntax error, a misspelled function or a label mismatch that empties a panel fails here."""
    prometheus = _require("prometheus")
    gw = gateway(config(route(upstream)))
    for i in range(20):
        sync_client.get(gw.url + f"/api/{i}")
    sync_client.get(gw.url + "/nowhere")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "kairos", "static_configs": [{"targets": [f"127.0.0.1:{gw.port}"]}]}],
    }))
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"), start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        with httpx.Client(timeout=5, trust_env=False) as c:

            def query(expr: str) -> list:
                body = c.get(api + "/query", params={"query": expr}).json()
                assert body["status"] == "success", (expr, body)
                return body["data"]["result"]

            def scraped() -> bool:
                try:
                    return len(query('kairos_requests_total{job="kairos"}')) > 0 and len(
                        query('count_over_time(kairos_build_info{job="kairos"}[1m]) >= 3'))
                except (httpx.HTTPError, ValueError, AssertionError):  # still starting: 503, not JSON
                    return False

            wait_until(scraped, timeout=30, what="three scrapes of the gateway")
            sync_client.get(gw.url + "/api/x")  # traffic between scrapes, so rates are non-zero
            for title, expr in dashboard_queries():
                query(expr)
            # Panels that must show data after this traffic.
            by_title = dict(dashboard_queries())
            assert query(by_title["Requests per second by route"])
            assert query(by_title["Gateway errors by kind"].replace("[15s]", "[1m]"))
            rules = c.get(api + "/rules").json()
            assert rules["status"] == "success"
            health = {r["name"]: r["health"] for g in rules["data"]["groups"] for r in g["rules"]}
            assert len(health) == 6 and set(health.values()) <= {"ok", "unknown"}, health
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
