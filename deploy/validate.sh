#!/usr/bin/env bash
# Renders the Kubernetes manifests (deploy/k8s: the base and every overlay)
# with `kubectl kustomize`, validates every object against the Kubernetes
# API schemas with kubernetes-validate (--strict: unknown fields are errors),
# and checks what the schemas cannot: the structure deploy/k8s/README.md
# promises (hash-suffixed ConfigMap referenced by the StatefulSet, headless
# governing Service, no API token, PDB and NetworkPolicy, probes on
# /livez and /readyz, HTTPS probes with TLS, the termination grace period
# against the config's drain, Secrets mounted where the config reads them).
#
#   bash deploy/validate.sh [OUT]     (OUT defaults to .cache/deploy)
#
# Writes OUT/<target>.yaml (the rendered manifests) and
# OUT/<target>/lookbook.toml (the config the ConfigMap carries), for
# target in base, dev, prod. Installs its validator into .cache/deploy-venv
# on first use (PyPI, pinned); quiet once installed. Exits non-zero with a
# message naming the target and the problem on any failure.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0 # PyPI; bundles schemas for Kubernetes 1.25-1.37
KUBERNETES_VERSION=1.32.0          # the API the manifests are checked against
PYYAML_VERSION=6.0.3

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/.cache/deploy}
mkdir -p "$out"
out=$(cd "$out" && pwd)
venv=$root/.cache/deploy-venv

fail() {
    echo "deploy/validate.sh: FAILED: $*" >&2
    exit 1
}

command -v kubectl >/dev/null 2>&1 ||
    fail "kubectl not found (needed for 'kubectl kustomize'; v1.32 with kustomize v5.5 is what this was written against)"

# The validator, installed once. A lock keeps concurrent runs (parallel
# tests) from building the venv twice at the same time.
mkdir -p "$root/.cache"
installed() {
    [ -x "$venv/bin/python" ] &&
        [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ] &&
        "$venv/bin/python" -c 'import sys, yaml, tomllib; sys.exit(yaml.__version__ != sys.argv[1])' "$PYYAML_VERSION" 2>/dev/null
}
(
    flock 9
    if ! installed; then
        echo "deploy/validate.sh: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" || fail "python3 -m venv failed (python3 >= 3.11 with venv needed)"
        "$venv/bin/python" -c 'import tomllib' 2>/dev/null || fail "python3 >= 3.11 needed (tomllib)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "pyyaml==$PYYAML_VERSION" >&2 ||
            fail "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
        installed || fail "kubernetes-validate $KUBERNETES_VALIDATE_VERSION did not install into $venv"
    fi
) 9>"$root/.cache/deploy-venv.lock"

targets=(base dev prod cluster)
for t in "${targets[@]}"; do
    if [ "$t" = base ]; then dir=$root/deploy/k8s/base; else dir=$root/deploy/k8s/overlays/$t; fi
    rendered=$out/$t.yaml
    kubectl kustomize "$dir" >"$rendered" 2>"$out/$t.kustomize.err" ||
        fail "$t: kubectl kustomize $dir: $(cat "$out/$t.kustomize.err")"
    rm -f "$out/$t.kustomize.err"
    # kubernetes-validate only warns (exit 0) about a kind it has no schema
    # for (a CRD such as ServiceMonitor): any WARN is a failure here too.
    if ! report=$("$venv/bin/kubernetes-validate" --strict --quiet \
        --kubernetes-version "$KUBERNETES_VERSION" "$rendered" 2>&1) ||
        grep -qE '^(WARN|ERROR|FATAL)' <<<"$report"; then
        fail "$t: kubernetes-validate --strict (Kubernetes $KUBERNETES_VERSION) rejected $rendered:
$report"
    fi
done

# What the schemas cannot check. Expectations per target: gRPC reflection,
# TLS (and with it tokens and HTTPS probes).
"$venv/bin/python" - "$out" "${targets[@]}" <<'PY'
import os
import re
import sys
import tomllib

import yaml

out, targets = sys.argv[1], sys.argv[2:]
EXPECT = {
    "base": {"reflection": False, "tls": False, "ui": True},
    "dev": {"reflection": True, "tls": False, "ui": True},
    "prod": {"reflection": False, "tls": True, "ui": False},
    "cluster": {"reflection": False, "tls": False, "ui": True, "replicas": 3},
}
GRACE_MARGIN_S = 10  # seconds the pod must have after drain_delay + shutdown_grace
problems = []


def duration_s(text, field):
    """humantime-style durations as the server parses them ("5s", "1m 30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(text))
    if not parts or re.sub(r"[\d.\sa-z]", "", str(text)):
        raise ValueError(f"{field} = {text!r} is not a duration")
    total = 0.0
    for n, unit in parts:
        if unit not in units:
            raise ValueError(f"{field} = {text!r}: unknown unit {unit!r}")
        total += float(n) * units[unit]
    return total


def port_of(listen):
    return int(str(listen).rsplit(":", 1)[1])


def check(t):
    errs = []
    err = errs.append
    expect = EXPECT[t]
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{t}.yaml")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def one(kind):
        found = by_kind.get(kind, [])
        if len(found) != 1:
            err(f"expected exactly one {kind}, found {len(found)}")
            return None
        return found[0]

    if by_kind.get("Secret"):
        err("a Secret is rendered: key material must not come from kustomize (create the Secrets by hand)")
    sts, cm = one("StatefulSet"), one("ConfigMap")
    sa, pdb, netpol = one("ServiceAccount"), one("PodDisruptionBudget"), one("NetworkPolicy")
    if sts is None or cm is None:
        return errs
    pod = sts["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    selector = sts["spec"]["selector"]["matchLabels"]
    if not all(labels.get(k) == v for k, v in selector.items()):
        err("the StatefulSet's selector does not match its pod labels")
    containers = [c for c in spec["containers"] if c["name"] == "lookbook"]
    if len(containers) != 1:
        return errs + ["no container named lookbook"]
    c = containers[0]

    # The config: hash-suffixed name, referenced, a complete lookbook.toml.
    name = cm["metadata"]["name"]
    if not re.fullmatch(r"lookbook-[a-z0-9]{10}", name):
        err(f"ConfigMap name {name!r} carries no content hash (configMapGenerator expected)")
    refs = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
    if refs != [name]:
        err(f"the StatefulSet's configMap volumes {refs} do not reference the generated ConfigMap {name!r}")
    text = cm.get("data", {}).get("lookbook.toml")
    if not text:
        return errs + ["the ConfigMap has no lookbook.toml"]
    os.makedirs(f"{out}/{t}", exist_ok=True)
    with open(f"{out}/{t}/lookbook.toml", "w") as f:
        f.write(text)
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return errs + [f"lookbook.toml is not valid TOML: {e}"]
    for section in ("server", "http", "storage", "model", "index", "personalize", "telemetry"):
        if section not in cfg:
            err(f"lookbook.toml has no [{section}] (each overlay's file must be complete)")
    server, http = cfg.get("server", {}), cfg.get("http", {})
    config_path = c.get("args", [])[c.get("args", []).index("--config") + 1] if "--config" in c.get("args", []) else None
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if config_path not in mounts or mounts[config_path].get("subPath") != "lookbook.toml":
        err(f"--config {config_path} is not the mounted lookbook.toml")

    # Identity.
    if spec.get("automountServiceAccountToken") is not False:
        err("pod spec: automountServiceAccountToken must be false")
    if sa is not None:
        if sa.get("automountServiceAccountToken") is not False:
            err("ServiceAccount: automountServiceAccountToken must be false")
        if spec.get("serviceAccountName") != sa["metadata"]["name"]:
            err("the pod does not run as the rendered ServiceAccount")

    # Services: the headless governing one, and the client one.
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    gov = services.get(sts["spec"].get("serviceName"))
    if gov is None:
        err(f"serviceName {sts['spec'].get('serviceName')!r} is not a rendered Service")
    else:
        if gov["spec"].get("clusterIP") != "None":
            err("the governing Service is not headless (clusterIP: None)")
        if gov["spec"].get("publishNotReadyAddresses") is not True:
            err("the governing Service must publish not-ready addresses")
    clients = [s for n, s in services.items() if s["spec"].get("clusterIP") != "None"]
    if len(clients) != 1:
        err(f"expected one client Service, found {len(clients)}")
    else:
        ports = {(p["name"], p["port"], p.get("appProtocol")) for p in clients[0]["spec"]["ports"]}
        if ("grpc", 50051, "grpc") not in ports or not any(p[:2] == ("http", 8080) for p in ports):
            err(f"client Service ports {sorted(ports, key=str)}: want grpc 50051 (appProtocol grpc) and http 8080")
        if clients[0]["spec"].get("selector") != selector:
            err("client Service selector differs from the StatefulSet's")

    # Ports agree with the config.
    cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if cports.get("grpc") != 50051 or cports.get("http") != 8080:
        err(f"container ports {cports}: want grpc 50051, http 8080")
    try:
        if port_of(server.get("listen")) != cports.get("grpc"):
            err(f"server.listen {server.get('listen')} is not the grpc container port")
        if port_of(http.get("listen")) != cports.get("http"):
            err(f"http.listen {http.get('listen')!r} is not the http container port (the probes need it)")
    except (IndexError, ValueError):
        err(f"server.listen / http.listen unparsable: {server.get('listen')!r} / {http.get('listen')!r}")

    # Termination grace vs the drain.
    try:
        need = duration_s(server["drain_delay"], "server.drain_delay") + duration_s(
            server["shutdown_grace"], "server.shutdown_grace")
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        if tgps < need + GRACE_MARGIN_S:
            err(f"terminationGracePeriodSeconds {tgps} must exceed drain_delay + shutdown_grace = "
                f"{need:g} s by at least {GRACE_MARGIN_S} s")
    except (KeyError, ValueError) as e:
        err(f"server.drain_delay / shutdown_grace: {e}")

    # Reflection, TLS, tokens.
    if server.get("reflection") is not expect["reflection"]:
        err(f"server.reflection = {server.get('reflection')!r}, want {expect['reflection']}")
    if http.get("ui", True) is not expect["ui"]:
        err(f"http.ui = {http.get('ui', True)!r}, want {expect['ui']} (the page is off in production)")
    tls, auth = cfg.get("tls", {}), cfg.get("auth", {})
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def secret_file(path, secret, key):
        """path is a file of Secret `secret`'s key `key`, mounted read-only, group-readable."""
        for mount_path, m in mounts.items():
            if path.startswith(mount_path.rstrip("/") + "/"):
                vol = volumes.get(m["name"], {}).get("secret")
                rel = path[len(mount_path.rstrip("/")) + 1:]
                if vol is None or vol.get("secretName") != secret:
                    err(f"{path} is not from Secret {secret}")
                    return
                items = {i["path"]: i["key"] for i in vol.get("items", [])}
                if items and items.get(rel) != key:
                    err(f"{path}: Secret {secret} does not project key {key!r} there")
                if not m.get("readOnly"):
                    err(f"{mount_path} must be mounted readOnly")
                mode = vol.get("defaultMode", 0o644)
                if not mode & 0o040 or mode & 0o007:
                    err(f"Secret {secret}: defaultMode {mode:#o} must be group-readable (fsGroup) and not world-readable")
                return
        err(f"{path} is on no volume mount (want Secret {secret})")

    probes = {k: c.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    want_path = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    want_scheme = "HTTPS" if expect["tls"] else "HTTP"
    for k, p in probes.items():
        get = (p or {}).get("httpGet")
        if not get:
            err(f"{k}: want an httpGet probe")
            continue
        if get.get("path") != want_path[k]:
            err(f"{k} asks {get.get('path')}, want {want_path[k]}")
        if get.get("port") not in ("http", 8080):
            err(f"{k} on port {get.get('port')}, want http (8080)")
        if get.get("scheme", "HTTP") != want_scheme:
            err(f"{k} scheme {get.get('scheme', 'HTTP')}, want {want_scheme} (TLS {'on' if expect['tls'] else 'off'})")
    if expect["tls"]:
        if not (tls.get("cert_file") and tls.get("key_file")):
            err("[tls] cert_file and key_file must be set")
        else:
            secret_file(tls["cert_file"], "lookbook-tls", "tls.crt")
            secret_file(tls["key_file"], "lookbook-tls", "tls.key")
        if not (auth.get("read_tokens_file") and auth.get("write_tokens_file")):
            err("[auth] read_tokens_file and write_tokens_file must be set")
        else:
            secret_file(auth["read_tokens_file"], "lookbook-tokens", "read")
            secret_file(auth["write_tokens_file"], "lookbook-tokens", "write")
    elif tls or auth:
        err("[tls] / [auth] set where this target expects neither")
    if pod["metadata"].get("annotations", {}).get("prometheus.io/scheme", "http") != want_scheme.lower():
        err(f"prometheus.io/scheme must be {want_scheme.lower()}")

    # Scrape annotations, hardening, sizes.
    ann = pod["metadata"].get("annotations", {})
    for k, v in {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}.items():
        if ann.get(k) != v:
            err(f"pod annotation {k} = {ann.get(k)!r}, want {v!r}")
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001 and psc.get("fsGroup") == 10001):
        err("pod securityContext: want runAsNonRoot, runAsUser 10001, fsGroup 10001")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err("pod securityContext: want seccompProfile RuntimeDefault")
    if not (csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
            and csc.get("capabilities", {}).get("drop") == ["ALL"]):
        err("container securityContext: want readOnlyRootFilesystem, no privilege escalation, drop ALL")
    res = c.get("resources", {})
    if not (res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory")):
        err("container: memory request and limit must be set")
    vcts = sts["spec"].get("volumeClaimTemplates", [])
    if [v["metadata"]["name"] for v in vcts] != ["data"] or mounts.get(
            cfg.get("storage", {}).get("data_dir"), {}).get("name") != "data":
        err("storage.data_dir must be the mount of the volumeClaimTemplate 'data'")
    want_replicas = expect.get("replicas", 1)
    if sts["spec"].get("replicas") != want_replicas:
        err(f"replicas must be {want_replicas} (more than one only in cluster mode: each pod owns its redb volume)")
    nats_url = cfg.get("cluster", {}).get("nats_url", "")
    if (want_replicas > 1) != bool(nats_url):
        err("cluster.nats_url must be set exactly when there are several replicas")
    if nats_url and cfg.get("cluster", {}).get("stream_replicas") != 3:
        err("cluster.stream_replicas must be 3 (one NATS server may be lost)")

    # Disruption budget and network policy select this pod.
    for obj, what in ((pdb, "PodDisruptionBudget"), (netpol, "NetworkPolicy")):
        if obj is None:
            continue
        sel = (obj["spec"].get("selector") or obj["spec"].get("podSelector") or {}).get("matchLabels", {})
        if not sel or not all(labels.get(k) == v for k, v in sel.items()):
            err(f"{what} does not select the lookbook pod")
    if pdb is not None and "minAvailable" in pdb["spec"]:
        err("PodDisruptionBudget: minAvailable with one replica blocks node drains forever")
    if netpol is not None:
        ingress_ports = {p.get("port") for rule in netpol["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if ingress_ports != {50051, 8080}:
            err(f"NetworkPolicy ingress ports {sorted(ingress_ports, key=str)}, want exactly 50051 and 8080")
        if "Egress" not in netpol["spec"].get("policyTypes", []):
            err("NetworkPolicy must restrict egress")
        egress_ports = {p.get("port") for rule in netpol["spec"].get("egress", []) for p in rule.get("ports", [])}
        if bool(nats_url) != (4222 in egress_ports):
            err("NetworkPolicy egress to NATS (4222) exactly when cluster.nats_url is set")
    return list(dict.fromkeys(errs))


for t in targets:
    for e in check(t):
        problems.append(f"{t}: {e}")
if problems:
    print("deploy/validate.sh: FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
PY

echo "deploy/validate.sh: ${targets[*]} rendered, valid against Kubernetes $KUBERNETES_VERSION (kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict), checks passed -> $out"
