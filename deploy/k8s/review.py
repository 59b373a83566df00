#!/usr/bin/env python3
"""What a reviewer checks in the rendered manifests, checked by a program.

Usage: review.py OVERLAY=RENDERED.yaml ... (check.sh renders every overlay and calls this).

Of every overlay: each container has probes, resources and the restricted security context;
each service is given every setting it reads (from its settings.rs) and nothing it does not;
the ports agree with the services' defaults, the Services, the probes, the scrape annotations
and the addresses the services dial; every NetworkPolicy, PodDisruptionBudget, Service and
HPA selects pods that exist; the grace period outlasts the drain; liveness and
readiness probes ask different questions. Of `production`: every
image pinned to a tag other than `latest`, and the Secret's keys all in its template.
Prints every problem found and exits 1 if there was one.
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "token", "filter", "keyword", "llm", "history"]
# Read by every service besides its settings struct (services/common/src/telemetry.rs).
COMMON_ENV = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"}
# The parts MYSQL_DSN is put together from in history.yaml and keyword.yaml.
MYSQL_PARTS = {"MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_DATABASE", "MYSQL_PASSWORD"}
EXTRA_ENV = {"history": MYSQL_PARTS, "keyword": MYSQL_PARTS}
WORKLOADS = {"Deployment", "StatefulSet"}

problems = []


def problem(overlay, what):
    problems.append(f"{overlay}: {what}")


def settings_of(service):
    """The environment names a service reads: its Settings fields, upper-cased, and the
    ports of its default listen addresses."""
    source = (ROOT / "services" / service / "src" / "settings.rs").read_text()
    struct = re.search(r"pub struct Settings \{(.*?)\n\}", source, re.S)
    if not struct:
        raise SystemExit(f"no `pub struct Settings` in services/{service}/src/settings.rs")
    fields = {name.upper() for name in re.findall(r"^\s*pub (\w+):", struct.group(1), re.M)}
    ports = {
        name.upper(): int(port)
        for name, port in re.findall(r'(\w+_listen): "[^"]*:(\d+)"', source)
    }
    return fields, ports


def selects(selector, labels):
    """Whether a label selector (matchLabels / matchExpressions) selects `labels`."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def port_of(address):
    match = re.search(r":(\d+)(/.*)?$", address)
    return int(match.group(1)) if match else None


class Rendering:
    def __init__(self, overlay, path):
        self.overlay = overlay
        self.objects = [doc for doc in yaml.safe_load_all(pathlib.Path(path).read_text()) if doc]
        self.pods = [o for o in self.objects if o["kind"] in WORKLOADS]
        self.config_maps = {o["metadata"]["name"]: o.get("data") or {}
                            for o in self.objects if o["kind"] == "ConfigMap"}
        self.secrets = {o["metadata"]["name"]: set((o.get("data") or {}) | (o.get("stringData") or {}))
                        for o in self.objects if o["kind"] == "Secret"}
        self.services = {o["metadata"]["name"]: o for o in self.objects if o["kind"] == "Service"}

    def fail(self, what):
        problem(self.overlay, what)

    def labels(self, workload):
        return workload["spec"]["template"]["metadata"].get("labels") or {}

    def pods_selected(self, selector):
        return [w for w in self.pods if selects(selector, self.labels(w))]

    def selects_each(self, selector):
        """Whether the selector selects a pod, and each value an `In` lists names one."""
        if not self.pods_selected(selector):
            return False
        for expression in (selector or {}).get("matchExpressions") or []:
            if expression["operator"] == "In":
                for value in expression["values"]:
                    if not any(self.labels(w).get(expression["key"]) == value for w in self.pods):
                        return False
        return True

    def workload(self, name):
        return next((w for w in self.pods if w["metadata"]["name"] == name), None)

    def environment(self, container):
        """Every name the container's environment has, with its value where it is known."""
        values = {}
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                if name not in self.config_maps:
                    self.fail(f"container {container['name']} reads a ConfigMap {name} not rendered")
                values.update(self.config_maps.get(name, {}))
        for variable in container.get("env") or []:
            values[variable["name"]] = variable.get("value")
        return values

    # ---- the checks ----------------------------------------------------------------

    def containers(self):
        for workload in self.pods:
            spec = workload["spec"]["template"]["spec"]
            pod_security = spec.get("securityContext") or {}
            for container in spec.get("initContainers", []) + spec["containers"]:
                where = f"{workload['kind']} {workload['metadata']['name']} container {container['name']}"
                security = container.get("securityContext") or {}
                merged = pod_security | security
                if merged.get("runAsNonRoot") is not True:
                    self.fail(f"{where}: not runAsNonRoot")
                if (merged.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                    self.fail(f"{where}: seccompProfile is not RuntimeDefault")
                if security.get("readOnlyRootFilesystem") is not True:
                    self.fail(f"{where}: root filesystem not read-only")
                if security.get("allowPrivilegeEscalation") is not False:
                    self.fail(f"{where}: privilege escalation not disallowed")
                if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                    self.fail(f"{where}: capabilities not all dropped")
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        self.fail(f"{where}: no {probe}")
                resources = container.get("resources") or {}
                for kind in ("requests", "limits"):
                    for resource in ("cpu", "memory"):
                        if resource not in (resources.get(kind) or {}):
                            self.fail(f"{where}: no {resource} {kind}")
                image = container["image"]
                name, _, tag = image.rpartition(":")
                if not name or "/" in tag or tag in ("", "latest"):
                    if self.overlay == "production" or tag == "latest":
                        self.fail(f"{where}: image {image} is not pinned to a tag other than latest")
                self.probe_ports(where, container)

    def probe_ports(self, where, container):
        ports = container.get("ports") or []
        names = {p.get("name") for p in ports}
        numbers = {p["containerPort"] for p in ports}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                if handler in probe:
                    port = probe[handler]["port"]
                    if port not in names and port not in numbers:
                        self.fail(f"{where}: {kind} dials port {port}, which it does not declare")

    def settings(self, secret_keys):
        for service in SERVICES:
            workload = self.workload(service)
            if workload is None:
                self.fail(f"no workload named {service}")
                continue
            container = next(c for c in workload["spec"]["template"]["spec"]["containers"]
                             if c["name"] == service)
            reads, default_ports = settings_of(service)
            environment = self.environment(container)
            known = reads | COMMON_ENV | EXTRA_ENV.get(service, set())
            for name in sorted(reads - set(environment)):
                self.fail(f"{service}: setting {name} (in its settings.rs) is not provided")
            for name in sorted(set(environment) - known):
                self.fail(f"{service}: {name} is provided but the service does not read it")
            for variable in container.get("env") or []:
                reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if reference and not reference.get("optional") and reference["key"] not in secret_keys(reference["name"]):
                    self.fail(f"{service}: secret key {reference['name']}/{reference['key']} is not provided")
            self.ports(service, workload, container, environment, default_ports)

    def ports(self, service, workload, container, environment, default_ports):
        declared = {p["containerPort"] for p in container.get("ports") or []}
        for setting, default_port in default_ports.items():
            if default_port not in declared:
                self.fail(f"{service}: the default port {default_port} of {setting} is not a container port")
            value = environment.get(setting)
            if value is not None and port_of(value) != default_port:
                self.fail(f"{service}: {setting}={value} differs from the default port {default_port}")
        metrics = [port_of(environment.get(s, "")) for s in default_ports if "METRICS" in s]
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            self.fail(f"{service}: pods not annotated for scraping")
        elif [int(annotations.get("prometheus.io/port", 0))] != metrics:
            self.fail(f"{service}: scrape port {annotations.get('prometheus.io/port')} is not {metrics}")
        for setting, value in environment.items():
            if setting.endswith("_ADDR") and value:
                self.address(service, setting, value)
        if service in ("history", "keyword"):
            self.address(service, "MYSQL_HOST", f"{environment.get('MYSQL_HOST')}:{environment.get('MYSQL_PORT')}")

    def address(self, service, setting, value):
        """An address one service dials: a Service of this rendering exposing that port and
        forwarding it to a pod that listens on it, or a host outside (production)."""
        host = re.sub(r"^\w+://", "", value).rsplit(":", 1)[0]
        port = port_of(value)
        target = self.services.get(host)
        if target is None:
            if "." not in host:
                self.fail(f"{service}: {setting}={value} names no Service of this overlay")
            return
        exposed = [p for p in target["spec"]["ports"] if p["port"] == port]
        if not exposed:
            self.fail(f"{service}: {setting}={value}: Service {host} does not expose port {port}")
            return
        pods = self.pods_selected(target["spec"]["selector"] and {"matchLabels": target["spec"]["selector"]})
        target_port = exposed[0].get("targetPort", port)
        listening = any(
            target_port in (p.get("name"), p["containerPort"])
            for w in pods for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []
        )
        if not listening:
            self.fail(f"{service}: {setting}={value}: no pod behind Service {host} listens on {target_port}")

    def selectors(self):
        for thing in self.objects:
            kind, name = thing["kind"], thing["metadata"]["name"]
            if kind == "NetworkPolicy":
                spec = thing["spec"]
                if spec["podSelector"] and not self.selects_each(spec["podSelector"]):
                    self.fail(f"NetworkPolicy {name} selects no pod")
                selected = self.pods_selected(spec["podSelector"]) if spec["podSelector"] else self.pods
                ports = {p["containerPort"] for w in selected
                         for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []}
                for rule in spec.get("ingress") or []:
                    for peer in rule.get("from") or []:
                        if "podSelector" in peer and "namespaceSelector" not in peer \
                                and not self.selects_each(peer["podSelector"]):
                            self.fail(f"NetworkPolicy {name} admits from pods that do not exist")
                    for port in rule.get("ports") or []:
                        if port["port"] not in ports:
                            self.fail(f"NetworkPolicy {name} opens port {port['port']}, on which no selected pod listens")
            elif kind in ("PodDisruptionBudget",):
                if not self.pods_selected(thing["spec"]["selector"]):
                    self.fail(f"{kind} {name} selects no pod")
            elif kind == "Service":
                if not self.pods_selected({"matchLabels": thing["spec"].get("selector") or {"-": "-"}}):
                    self.fail(f"Service {name} selects no pod")
            elif kind == "HorizontalPodAutoscaler":
                target = thing["spec"]["scaleTargetRef"]
                if not self.workload(target["name"]):
                    self.fail(f"HPA {name} scales {target['name']}, which does not exist")
            elif kind in WORKLOADS:
                if not selects(thing["spec"]["selector"], self.labels(thing)):
                    self.fail(f"{kind} {name}: its selector does not select its own pods")

    def grace(self):
        """The grace period covers the preStop pause plus the service's own drain
        (SHUTDOWN_GRACE_SECS), and the drain covers a whole unary completion
        (LLM_TIMEOUT_MS) for the gateway and the llm service."""
        for service in SERVICES:
            workload = self.workload(service)
            if workload is None:
                continue
            spec = workload["spec"]["template"]["spec"]
            container = next(c for c in spec["containers"] if c["name"] == service)
            environment = self.environment(container)
            pause = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
            drain = int(environment.get("SHUTDOWN_GRACE_SECS") or 20)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= pause + drain:
                self.fail(f"{service}: terminationGracePeriodSeconds {grace} does not outlast {pause} s "
                          f"of preStop and SHUTDOWN_GRACE_SECS={drain}")
            work = int(environment.get("LLM_TIMEOUT_MS") or 0) / 1000 if service in ("gateway", "llm") else 0
            if drain <= work:
                self.fail(f"{service}: SHUTDOWN_GRACE_SECS={drain} does not outlast a completion "
                          f"(LLM_TIMEOUT_MS {work:g} s)")

    def probes(self):
        """Liveness and readiness differ: liveness asks whether the process answers,
        readiness whether its dependencies do (/ready, or the gRPC service's entry)."""
        for service in SERVICES:
            workload = self.workload(service)
            if workload is None:
                continue
            container = next(c for c in workload["spec"]["template"]["spec"]["containers"]
                             if c["name"] == service)
            live = container.get("livenessProbe") or {}
            ready = container.get("readinessProbe") or {}
            if service == "gateway":
                if (live.get("httpGet") or {}).get("path") != "/health":
                    self.fail("gateway: livenessProbe is not GET /health")
                if (ready.get("httpGet") or {}).get("path") != "/ready":
                    self.fail("gateway: readinessProbe is not GET /ready")
            else:
                if (live.get("grpc") or {}).get("service"):
                    self.fail(f"{service}: livenessProbe names a service (readiness), not the overall status")
                if not (ready.get("grpc") or {}).get("service", "").startswith("chat.v1."):
                    self.fail(f"{service}: readinessProbe does not name its gRPC service (readiness)")


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    template = ROOT / "deploy/k8s/overlays/production/secret.template.yaml"
    template_keys = set(yaml.safe_load(template.read_text())["stringData"])
    for argument in sys.argv[1:]:
        overlay, _, path = argument.partition("=")
        rendering = Rendering(overlay, path)

        def secret_keys(name, rendering=rendering):
            if name in rendering.secrets:
                return rendering.secrets[name]
            return template_keys if name == "chat-secrets" else set()

        rendering.containers()
        rendering.settings(secret_keys)
        rendering.selectors()
        rendering.grace()
        rendering.probes()
        if overlay == "production" and set(rendering.secrets):
            rendering.fail("renders a Secret: production takes the one you create")
        print(f"review: {overlay}: {len(rendering.objects)} objects, {len(rendering.pods)} workloads checked")
    for line in problems:
        print(f"review: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(f"review: {len(problems)} problems")
    print("review: no problems")


if __name__ == "__main__":
    main()
