#!/usr/bin/env bash
# Validate deploy/kubernetes/ offline:
#   1. every manifest against the Kubernetes OpenAPI schemas bundled in
#      kubernetes-validate (strict: unknown fields are errors);
#   2. kustomization.yaml lists exactly the manifests in the directory;
#   3. the manifests agree with each other (names, mounts, args, keys).
#
# Needs network only once, to install kubernetes-validate from PyPI into a
# cached virtualenv. Environment overrides:
#   K8S_VERSION                  Kubernetes schema version (default 1.30.0)
#   KUBERNETES_VALIDATE_VERSION  PyPI version to install (default 1.37.0)
#   SIDEKEY_DEPLOY_VENV          virtualenv path
#   SIDEKEY_BIN                  optional: a built sidekey; when set, step 4 runs
#                                `sidekey check` on the embedded providers.yaml
#                                and vault.yaml
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

K8S_VERSION=${K8S_VERSION:-1.30.0}
KV_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
VENV=${SIDEKEY_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sidekey-deploy-venv}
MANIFEST_DIR=kubernetes

fail() { echo "validate.sh: FAIL: $*" >&2; exit 1; }

# --- tool -------------------------------------------------------------------
if [[ ! -x "$VENV/bin/kubernetes-validate" ]] \
   || [[ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KV_VERSION" ]]; then
  echo "Installing kubernetes-validate==$KV_VERSION into $VENV"
  command -v python3 >/dev/null || fail "python3 is required"
  python3 -m venv "$VENV" || fail "could not create a virtualenv at $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" \
    || fail "could not install kubernetes-validate==$KV_VERSION from PyPI"
fi
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), Kubernetes schema $K8S_VERSION (strict)"

# --- 1. schemas ---------------------------------------------------------------
shopt -s nullglob
manifests=()
for f in "$MANIFEST_DIR"/*.yaml "$MANIFEST_DIR"/*.yml; do
  [[ "$(basename "$f")" == kustomization.yaml ]] && continue
  manifests+=("$f")
done
((${#manifests[@]})) || fail "no manifests found in $MANIFEST_DIR/"

set +e
out=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "${manifests[@]}" 2>&1)
rc=$?
set -e
echo "$out"
((rc == 0)) || fail "schema validation failed (exit $rc)"
# kubernetes-validate only warns when it has no schema for a kind (a typo in
# apiVersion or kind); here every manifest must be checked, so that fails too.
if grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
  fail "schema validation reported problems (see above)"
fi

# --- 2 and 3. kustomization and cross-references ------------------------------
if ! "$VENV/bin/python" - "$MANIFEST_DIR" <<'PY'
import hashlib, os, re, sys
import yaml

d = sys.argv[1]
errors = []

def err(msg):
    errors.append(msg)

with open(os.path.join(d, "kustomization.yaml")) as f:
    kust = yaml.safe_load(f)
listed = kust.get("resources") or []
present = sorted(n for n in os.listdir(d)
                 if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml")
for n in present:
    if n not in listed:
        err(f"kustomization.yaml: {n} is in {d}/ but not listed in resources")
for n in listed:
    if n not in present:
        err(f"kustomization.yaml: resources lists {n}, which does not exist")
if len(set(listed)) != len(listed):
    err("kustomization.yaml: resources lists a file twice")

docs = []
for n in present:
    with open(os.path.join(d, n)) as f:
        docs += [(n, x) for x in yaml.safe_load_all(f) if x]
by_kind = {}
for n, x in docs:
    by_kind.setdefault(x["kind"], {})[x["metadata"]["name"]] = x

def secret_data(s):
    return dict(s.get("stringData") or {}, **{k: "<binary>" for k in (s.get("data") or {})})

deploy = by_kind.get("Deployment", {}).get("example-app")
if deploy is None:
    err("deployment.yaml: Deployment example-app not found")
    deploy = {"spec": {"template": {"spec": {}}}}
pod = deploy["spec"]["template"]["spec"]
volumes = {v["name"]: v for v in pod.get("volumes", [])}
sidecars = [c for c in pod.get("initContainers", []) if c["name"] == "sidekey"]
if not sidecars:
    err("deployment.yaml: no sidekey init container")
for c in sidecars:
    if c.get("restartPolicy") != "Always":
        err("deployment.yaml: sidekey is not a native sidecar (restartPolicy: Always)")
    mounts = c.get("volumeMounts", [])
    for m in mounts:
        if "subPath" in m or "subPathExpr" in m:
            err(f"deployment.yaml: sidekey mount {m['name']} uses subPath; it would never reload")
    args = dict(a[2:].split("=", 1) for a in c.get("args", []) if a.startswith("--") and "=" in a)
    if args.get("listen", "").split(":")[0] != "127.0.0.1":
        err("deployment.yaml: the proxy must listen on 127.0.0.1 only")
    for flag, vol, writable in (("providers", "providers", False), ("vault", "vault", False),
                                ("state", "state", True)):
        path = args.get(flag)
        if not path:
            err(f"deployment.yaml: sidekey has no --{flag}=PATH")
            continue
        m = next((m for m in mounts if m["name"] == vol), None)
        if m is None or not path.startswith(m["mountPath"].rstrip("/") + "/"):
            err(f"deployment.yaml: --{flag}={path} is not inside the {vol} volume mount")
        elif writable and m.get("readOnly"):
            err(f"deployment.yaml: --{flag} must be on a writable mount")
        elif vol in volumes:
            v = volumes[vol]
            name = os.path.basename(path)
            if "configMap" in v:
                cm = by_kind.get("ConfigMap", {}).get(v["configMap"]["name"])
                if cm is None or name not in (cm.get("data") or {}):
                    err(f"deployment.yaml: ConfigMap {v['configMap']['name']} has no key {name}")
            if "secret" in v:
                s = by_kind.get("Secret", {}).get(v["secret"]["secretName"])
                if s is None or name not in secret_data(s):
                    err(f"deployment.yaml: Secret {v['secret']['secretName']} has no key {name}")
    m = re.fullmatch(r"(\d+)s", args.get("drain-timeout", ""))
    if m and pod.get("terminationGracePeriodSeconds", 30) <= int(m.group(1)):
        err("deployment.yaml: terminationGracePeriodSeconds must exceed --drain-timeout")
    sc = c.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("runAsNonRoot")):
        err("deployment.yaml: sidekey securityContext is not locked down")

for c in pod.get("containers", []) + pod.get("initContainers", []):
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            s = by_kind.get("Secret", {}).get(ref["name"])
            if s is None or ref["key"] not in secret_data(s):
                err(f"deployment.yaml: {c['name']} env {e['name']} refers to missing "
                    f"Secret key {ref['name']}/{ref['key']}")

# The embedded config files must parse, and reference each other correctly.
providers, vault = {}, {}
for cm in by_kind.get("ConfigMap", {}).values():
    if "providers.yaml" in (cm.get("data") or {}):
        providers = yaml.safe_load(cm["data"]["providers.yaml"]) or {}
for s in by_kind.get("Secret", {}).values():
    if "vault.yaml" in (s.get("stringData") or {}):
        vault = yaml.safe_load(s["stringData"]["vault.yaml"]) or {}
integrations = {}
for i, it in enumerate(vault.get("integrations") or []):
    integrations[it.get("unique_key")] = it
    if it.get("provider") not in providers:
        err(f"vault.yaml: integrations[{i}].provider {it.get('provider')!r} is not in providers.yaml")
for i, c in enumerate(vault.get("connections") or []):
    if c.get("provider_config_key") not in integrations:
        err(f"vault.yaml: connections[{i}].provider_config_key {c.get('provider_config_key')!r} "
            "names no integration")
hashes = {str(k.get("sha256", "")).lower() for k in vault.get("secret_keys") or []}
app_key = secret_data(by_kind.get("Secret", {}).get("example-app-sidekey-key", {})).get("secret-key")
if app_key is None:
    err("secret-app.yaml: no secret-key for the app")
elif hashlib.sha256(app_key.encode()).hexdigest() not in hashes:
    err("vault.yaml: secret_keys has no sha256 of the app's caller key (secret-app.yaml)")

if errors:
    for e in errors:
        print("ERROR " + e)
    sys.exit(1)
print(f"INFO kustomization.yaml lists all {len(present)} manifests; cross-references consistent")
PY
then
  fail "consistency checks failed"
fi

# --- 4. optional: sidekey's own checks on the embedded config files ------------
if [[ -n "${SIDEKEY_BIN:-}" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/python" - "$MANIFEST_DIR" "$tmp" <<'PY'
import os, sys, yaml
d, out = sys.argv[1], sys.argv[2]
with open(os.path.join(d, "configmap-providers.yaml")) as f:
    open(os.path.join(out, "providers.yaml"), "w").write(yaml.safe_load(f)["data"]["providers.yaml"])
with open(os.path.join(d, "secret-vault.yaml")) as f:
    open(os.path.join(out, "vault.yaml"), "w").write(yaml.safe_load(f)["stringData"]["vault.yaml"])
PY
  "$SIDEKEY_BIN" check --providers "$tmp/providers.yaml" --vault "$tmp/vault.yaml" \
    || fail "sidekey check rejected the embedded providers.yaml or vault.yaml"
  echo "INFO sidekey check passed for the embedded providers.yaml and vault.yaml"
fi

echo "validate.sh: OK"
