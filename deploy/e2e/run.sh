#!/usr/bin/env bash
# End-to-end check of the operator on a real cluster (kind, k3d or a cloud).
# It cannot run on the development machines (no API server there); run it
# wherever `kubectl` reaches a disposable cluster whose nodes can pull $IMAGE.
#
#   IMAGE=ghcr.io/aethermesh/aether-relay:dev deploy/e2e/run.sh
#
# What it checks:
#   1. the CRDs and the operator install; one operator replica leads (Lease)
#   2. a 3-relay mesh becomes Ready (kubectl wait on the condition)
#   3. every relay serves /readyz and the endpoint list at /v1/clouds/local
#   4. scaling the Node to 2 drains the leaving relay before its pod goes
#   5. an invalid change (shards) is refused by the API server (CEL rule)
#   6. deleting the mesh removes its children and keeps the volumes
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${IMAGE:?set IMAGE to an aether-relay image the cluster can pull}"
NS=aether-e2e
step() { printf '\n--- %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "install CRDs and the operator"
kubectl apply -f crds/aethermesh.io.yaml
sed "s#ghcr.io/aethermesh/aether-relay:0.1.0#${IMAGE}#" deploy/operator.yaml | kubectl apply -f -
kubectl -n aether-system rollout status deploy/aether-operator --timeout=180s
holder=$(kubectl -n aether-system get lease aether-operator -o jsonpath='{.spec.holderIdentity}')
[ -n "$holder" ] || fail "no operator replica holds the Lease"
echo "leader: $holder"

step "a 3-relay mesh becomes Ready"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
cat <<YAML | kubectl apply -n "$NS" -f -
apiVersion: aethermesh.io/v1alpha1
kind: Mesh
metadata: {name: e2e}
spec:
  shards: 16
  replicationFactor: 2
  image: ${IMAGE}
  clouds: [{name: local}]
---
apiVersion: aethermesh.io/v1alpha1
kind: Node
metadata: {name: e2e-local}
spec: {mesh: e2e, cloud: local, replicas: 3, storage: {size: 1Gi}}
YAML
kubectl -n "$NS" wait --for=condition=Ready mesh/e2e --timeout=600s

step "relays serve readiness and the endpoint list"
kubectl -n "$NS" port-forward svc/e2e-local 18080:8080 >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
sleep 3
curl -fsS http://127.0.0.1:18080/readyz | grep -q ready || fail "/readyz"
curl -fsS http://127.0.0.1:18080/v1/clouds/local | grep -q e2e-local || fail "/v1/clouds/local"

step "scale-down drains before the pod goes"
kubectl -n "$NS" patch node.aethermesh.io e2e-local --type merge -p '{"spec":{"replicas":2}}'
kubectl -n "$NS" get configmap e2e-mesh -o jsonpath='{.data.members}' | grep -q 'e2e-local-2=' && {
  sleep 5
  kubectl -n "$NS" get configmap e2e-mesh -o jsonpath='{.data.members}' | grep -q 'e2e-local-2=' \
    && fail "e2e-local-2 is still in the membership"
}
for _ in $(seq 1 120); do
  [ "$(kubectl -n "$NS" get sts e2e-local -o jsonpath='{.spec.replicas}')" = 2 ] && break
  sleep 2
done
[ "$(kubectl -n "$NS" get sts e2e-local -o jsonpath='{.spec.replicas}')" = 2 ] || fail "the StatefulSet never shrank"
kubectl -n "$NS" wait --for=condition=Ready mesh/e2e --timeout=300s

step "an invalid change is refused by the API server"
if kubectl -n "$NS" patch mesh e2e --type merge -p '{"spec":{"shards":32}}' 2>err.txt; then
  fail "shards changed"
fi
grep -q "shards is immutable" err.txt || { cat err.txt; fail "unexpected refusal"; }
rm -f err.txt

step "deleting the mesh removes its children, keeps volumes"
kubectl -n "$NS" delete node.aethermesh.io e2e-local --wait=true
kubectl -n "$NS" delete mesh e2e --wait=true --timeout=120s
kubectl -n "$NS" wait --for=delete sts/e2e-local --timeout=120s || fail "the StatefulSet outlived its Node"
kubectl -n "$NS" get pvc -o name | grep -q data-e2e-local-0 || fail "the relay volumes were deleted"
echo
echo "e2e OK"
