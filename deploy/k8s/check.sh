#!/usr/bin/env bash
# The Kubernetes manifests, checked offline (no cluster, no network beyond PyPI for the
# first run): every overlay renders with `kubectl kustomize`, every rendered object and the
# Secret template validate against the Kubernetes schemas (kubernetes-validate --strict,
# which bundles them), yamllint passes, and review.py finds nothing a reviewer would.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
out="$root/target/k8s"
venv="$root/target/k8s/venv"
kubernetes_version=1.33.0

command -v kubectl >/dev/null || { echo "k8s: kubectl is needed (it renders the overlays)" >&2; exit 1; }
if ! "$venv/bin/python" -c 'import kubernetes_validate, yamllint, yaml' 2>/dev/null \
  || ! cmp -s requirements.txt "$venv/requirements.txt"; then
  echo "k8s: installing the checkers (requirements.txt) in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
  cp requirements.txt "$venv/requirements.txt"
fi

mkdir -p "$out"
reviews=()
for overlay in overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$out/$name.yaml"
  echo "k8s: $name renders ($(grep -c '^kind:' "$out/$name.yaml") objects)"
  reviews+=("$name=$out/$name.yaml")
done

"$venv/bin/kubernetes-validate" --strict --quiet -k "$kubernetes_version" \
  "$out"/dev.yaml "$out"/production.yaml overlays/production/secret.template.yaml
echo "k8s: the objects validate against the Kubernetes $kubernetes_version schemas (strict)"
"$venv/bin/yamllint" --strict -c .yamllint.yaml .
echo "k8s: yamllint passes"
"$venv/bin/python" review.py "${reviews[@]}"

# The review must be able to fail: a rendering with a probe, a setting, a port, the
# gateway's readiness probe and the grace periods broken.
sed -e '0,/readinessProbe:/s//readinessProbeGone:/' \
  -e 's/MAX_TEXT_CHARS:/MAX_TEXT_CHAR:/' \
  -e 's/- port: 50052/- port: 50059/' \
  -e 's|path: /ready|path: /health|' \
  -e 's/terminationGracePeriodSeconds: 35/terminationGracePeriodSeconds: 25/' "$out/dev.yaml" >"$out/broken.yaml"
if found=$("$venv/bin/python" review.py "broken=$out/broken.yaml" 2>&1); then
  echo "k8s: review.py passed a rendering it should have failed" >&2
  exit 1
fi
for expected in "no readinessProbe" "MAX_TEXT_CHARS (in its settings.rs) is not provided" "opens port 50059" \
  "readinessProbe is not GET /ready" "does not outlast 5 s of preStop and SHUTDOWN_GRACE_SECS"; do
  grep -q "$expected" <<<"$found" || { echo "k8s: review.py missed: $expected" >&2; exit 1; }
done
echo "k8s: review.py fails a broken rendering, as it should"
