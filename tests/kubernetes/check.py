"""Checks packaging/kubernetes/ offline: every manifest against the pinned
Kubernetes version's schemas (kubernetes-validate, strict), and what the
schemas cannot know: the ConfigMap's config is one echo-lab accepts
(`echo-lab --check-config`), the grace period covers shutdown_delay +
drain_timeout, the probes and the ServiceMonitor name the metrics port the
config listens on, the pod runs non-root with a read-only root and no
capabilities.

Usage: python check.py ECHO_LAB_BINARY MANIFEST_DIR
Run by tests/kubernetes.rs with the venv tests/run.sh makes.
"""

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

KUBERNETES = "1.31.0"


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def seconds(text):
    """'5s', '1m', or a number of seconds, as echo-lab reads them."""
    if isinstance(text, int):
        return text
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]]


def main(echo_lab, directory):
    files = sorted(Path(directory).glob("*.yaml"))
    docs = {}
    for f in files:
        doc = yaml.safe_load(f.read_text())
        docs[doc["kind"]] = doc
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"]:
        if kind not in docs:
            fail(f"no {kind} in {directory}")

    # The schemas of the pinned version, strictly (unknown fields refused).
    # The ServiceMonitor is a CRD's: the schemas have none, checked below.
    builtin = [str(f) for f in files if docs_kind(f) != "ServiceMonitor"]
    out = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "-k", KUBERNETES, "--strict", *builtin],
        capture_output=True, text=True,
    )
    print(out.stdout + out.stderr, end="")
    if out.returncode != 0 or out.stdout.count(" passed ") != len(builtin):
        fail("kubernetes-validate did not pass every manifest")

    # The config is one the daemon takes.
    text = docs["ConfigMap"]["data"]["echo-lab.toml"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as t:
        t.write(text)
        t.flush()
        out = subprocess.run([echo_lab, "--check-config", "--config", t.name], capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"echo-lab --check-config refuses the ConfigMap's config: {out.stdout}{out.stderr}")
    config = tomllib.loads(text)

    pod = docs["Deployment"]["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    needed = seconds(config.get("shutdown_delay", 0)) + seconds(config.get("drain_timeout", "10s")) + 2
    if grace <= needed:
        fail(f"terminationGracePeriodSeconds {grace} <= shutdown_delay + drain_timeout + 2s margin ({needed})")

    (container,) = pod["containers"]
    metrics_port = int(config["metrics_listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p for p in container["ports"]}
    if ports["metrics"]["containerPort"] != metrics_port:
        fail("the container's metrics port is not metrics_listen's")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = container[probe]["httpGet"]
        if get["path"] != path or get["port"] != "metrics":
            fail(f"{probe} must GET {path} on the metrics port")
    sc = container["securityContext"]
    if not (
        sc.get("readOnlyRootFilesystem")
        and sc.get("allowPrivilegeEscalation") is False
        and sc.get("capabilities", {}).get("drop") == ["ALL"]
        and pod["securityContext"].get("runAsNonRoot")
    ):
        fail("the pod must run non-root, read-only root, no privilege escalation, all capabilities dropped")
    for kind in ["requests", "limits"]:
        if not {"cpu", "memory"} <= set(container["resources"].get(kind, {})):
            fail(f"resources.{kind} must set cpu and memory")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    if "/etc/echo-lab.toml" not in mounts or str(Path(config["control_socket"]).parent) not in mounts:
        fail("the config and the control socket's directory must be mounted")

    service_ports = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    if {p["protocol"] for p in service_ports.values()} != {"TCP", "UDP"}:
        fail("the Service must carry TCP and UDP")
    for name, p in service_ports.items():
        if p["targetPort"] not in ports:
            fail(f"Service port {name} targets no container port")
    selector = docs["Service"]["spec"]["selector"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in selector.items()):
        fail("the Service selects no pod of the Deployment")
    pdb = docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in pdb.items()):
        fail("the PodDisruptionBudget selects no pod of the Deployment")

    sm = docs["ServiceMonitor"]
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        fail("ServiceMonitor apiVersion")
    for e in sm["spec"]["endpoints"]:
        if e["port"] not in service_ports or e.get("path", "/metrics") != "/metrics":
            fail("the ServiceMonitor must scrape /metrics on a named Service port")
    print(f"ok: {len(files)} manifests, Kubernetes {KUBERNETES}")


def docs_kind(path):
    return yaml.safe_load(path.read_text())["kind"]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
