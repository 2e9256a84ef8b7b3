"""deploy/ validated offline: Kubernetes manifests and the compose file parse and refer to each
other consistently, the HPA's metric is one the server exports, and nginx accepts its config
(`nginx -t`, with paths and upstreams substituted) when nginx is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmscope.serve.metrics import ServerMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/k8s by kind (one object of each kind)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and {"apiVersion", "kind"} <= doc.keys(), path
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_kubernetes_objects_refer_to_each_other() -> None:
    objs = k8s_objects()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization"} <= objs.keys()
    listed = {str(r) for r in objs["Kustomization"]["resources"]}
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    deployment = objs["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert args[:2] == ["lmscope", "serve"] and arg_after(args, "--host") == "0.0.0.0"
    assert ports["http"] == int(arg_after(args, "--port"))
    env = {e["name"] for e in container.get("env", [])}
    for ref in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert ref in env, f"args use $({ref}) but the container does not define it"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in ports, probe
    annotations = spec["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]

    service = objs["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])

    hpa = objs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert metric["type"] == "Pods" and name == "lmscope:num_requests_waiting"
    exported = ServerMetrics().render().decode()
    assert f"# TYPE {name} gauge" in exported  # the server really exports it
    rules = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert any(name in r["seriesQuery"] and r["name"]["as"] == name for r in rules)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def upstream_servers(conf: str) -> list[tuple[str, int]]:
    block = re.search(r"upstream lmscope \{(.*?)\}", conf, re.S)
    assert block is not None
    return [(h, int(p)) for h, p in re.findall(r"^\s*server ([\w.-]+):(\d+)\b", block[1], re.M)]


def test_compose_wires_the_balancer_to_every_replica() -> None:
    services = compose()["services"]
    replicas = {k: v for k, v in services.items() if k.startswith("replica-")}
    assert len(replicas) >= 2
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert sorted(upstream_servers(conf)) == sorted(
        (name, int(arg_after(svc["command"], "--port"))) for name, svc in replicas.items()
    )
    lb = services["lb"]
    mounts = [v.split(":") for v in lb["volumes"]]
    assert any((DEPLOY / src).resolve() == (DEPLOY / "nginx" / "nginx.conf") for src, *_ in mounts)
    assert set(lb["depends_on"]) == set(replicas)
    listen = re.search(r"listen (\d+);", conf)
    assert listen is not None and lb["ports"] == [f"{listen[1]}:{listen[1]}"]
    for svc in replicas.values():
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        url = arg_after(svc["command"], "--feedback-db")
        assert url.startswith("postgresql://") and "@db:" in url and "db" in svc["depends_on"]
        build = svc["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_nginx_config_streams_and_retries_only_unstarted_requests() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M)
    retry = re.search(r"^\s*proxy_next_upstream ([^;]+);", conf, re.M)
    assert retry is not None
    assert {"error", "timeout", "non_idempotent"} <= set(retry[1].split())
    assert re.search(r"^\s*proxy_next_upstream_timeout \d+s;", conf, re.M)
    block = re.search(r"upstream lmscope \{(.*?)\}", conf, re.S)
    assert block is not None
    servers = re.findall(r"^\s*server [^;]+;", block[1], re.M)
    assert servers and all("max_fails=" in s and "fail_timeout=" in s for s in servers)
    read = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read is not None and int(read[1]) > 600  # longer than the server's request timeout


def local_nginx_conf(conf: str, root: Path, port: int, upstreams: list[int]) -> str:
    """The shipped config with its own pid/log/temp paths under `root`, the given listen port
    and loopback upstreams: runnable by an unprivileged nginx, beside any system one."""
    for directive in ("pid", "error_log", "access_log"):
        conf = re.sub(
            rf"^(\s*){directive} /[^\s;]+",
            rf"\g<1>{directive} {root}/{directive}",
            conf,
            flags=re.M,
        )
    conf = re.sub(r"(\w+_temp_path) /var/cache/nginx/(\w+);", rf"\1 {root}/\2;", conf)
    conf = re.sub(r"listen \d+;", f"listen 127.0.0.1:{port};", conf)
    servers = "".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in upstreams
    )
    conf = re.sub(
        r"(upstream lmscope \{\n(?:\s*#.*\n|\s*least_conn;.*\n)*)(?:\s*server [^\n]+\n)+",
        rf"\1{servers}",
        conf,
    )
    assert "/var/" not in conf, "a path was left unsubstituted"
    return conf


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    conf = local_nginx_conf((DEPLOY / "nginx" / "nginx.conf").read_text(), tmp_path, 18080, [1, 2])
    assert upstream_servers(conf) == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
