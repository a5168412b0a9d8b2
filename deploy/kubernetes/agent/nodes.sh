#!/bin/sh
# One overlay per node for Tern's agents: the agent's DaemonSet pinned to the node, and a
# Secret holding that node's one-time enrollment token only. The kubelet's node authorizer lets
# a node read only the Secrets its own pods name, so no node can read another's token.
#
# usage: nodes.sh OUT_DIR NODE...
#   then: kubectl apply -k OUT_DIR
# Each node's token comes from $TERN_TOKEN_DIR/NODE when that file exists, else from
# `ternctl token create --labels node=NODE --ttl 24h` (ternctl's usual settings apply).
set -eu

if [ "$#" -lt 2 ]; then
  echo "usage: $0 OUT_DIR NODE..." >&2
  exit 2
fi
out=$1
shift
base=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# A path from directory $1 to directory $2 (both absolute), for kustomize's resources.
relative() {
  python3 -c 'import os, sys; print(os.path.relpath(sys.argv[2], sys.argv[1]))' "$1" "$2"
}

nodes=""
for node in "$@"; do
  case "$node" in
    ''|*[!a-z0-9.-]*|[.-]*|*[.-])
      echo "error: $node is not a node name (lower-case letters, digits, '.' and '-')" >&2
      exit 2
      ;;
  esac
  dir="$out/$node"
  mkdir -p "$dir"
  umask 077
  if [ -n "${TERN_TOKEN_DIR:-}" ] && [ -f "$TERN_TOKEN_DIR/$node" ]; then
    cp "$TERN_TOKEN_DIR/$node" "$dir/token"
  else
    ternctl token create --labels "node=$node" --ttl 24h > "$dir/token"
  fi
  umask 022
  cat > "$dir/kustomization.yaml" <<YAML
# The agent of node $node: made by deploy/kubernetes/agent/nodes.sh.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
nameSuffix: -$node
resources:
  - $(relative "$dir" "$base")
secretGenerator:
  - name: tern-agent-token
    namespace: tern
    files: [token]
    options: { disableNameSuffixHash: true }
patches:
  - target: { kind: DaemonSet, name: tern-agent }
    patch: |-
      - op: add
        path: /spec/template/spec/nodeSelector
        value: { kubernetes.io/hostname: $node }
      - op: add
        path: /spec/selector/matchLabels/tern.dev~1node
        value: $node
      - op: add
        path: /spec/template/metadata/labels/tern.dev~1node
        value: $node
YAML
  nodes="$nodes  - $node
"
done

cat > "$out/kustomization.yaml" <<YAML
# Tern's agents, one overlay per node: made by deploy/kubernetes/agent/nodes.sh.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
$nodes
YAML
echo "wrote $out: kubectl apply -k $out"
