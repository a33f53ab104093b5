#!/usr/bin/env bash
# A nines cluster of four "hosts" on this machine, one network namespace each (root needed):
# nines-h0 runs the director, nines-h1..h3 run `nines agent` as node-1..node-3. The hosts sit on
# a bridge in their own namespace (nines-sw), 10.78.0.1-4/24; nothing is added to the root
# namespace. Killing a host kills every process in its namespace, as pulling its plug would;
# the director's fence command does the same to a lost node.
#
#   scripts/local-cluster.sh up [CONFIG]   # default examples/cluster-3n.yaml
#   scripts/local-cluster.sh status        # nines status of the director
#   scripts/local-cluster.sh probe         # inc the counter through each node's address
#   scripts/local-cluster.sh kill N        # every process of node-N dies
#   scripts/local-cluster.sh start N       # node-N's agent again (it rejoins clean)
#   scripts/local-cluster.sh down          # stop everything, delete the namespaces
#
# Uses target/release/nines (build it first: cargo build --release). State and logs live
# in /tmp/nines-local (director: /tmp/nines-local/director, agents: /tmp/nines-local/node-N).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
NINES="$PWD/target/release/nines"
DIR=/tmp/nines-local
NET=10.78.0
PORT=7400

die() { echo "local-cluster: $*" >&2; exit 1; }
ns() { echo "nines-h$1"; }
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
[ -x "$NINES" ] || die "build the binary first: cargo build --release"
# The components the agents start are `nines example counter`: find `nines` on PATH.
export PATH="$PWD/target/release:$PATH"

up() {
    local config=${1:-examples/cluster-3n.yaml}
    ip netns list | grep -q '^nines-sw' && die "already up (scripts/local-cluster.sh down first)"
    mkdir -p "$DIR"
    ip netns add nines-sw
    ip -n nines-sw link add br0 type bridge
    ip -n nines-sw link set br0 up
    for i in 0 1 2 3; do
        ip netns add "$(ns $i)"
        ip -n nines-sw link add "p$i" type veth peer name eth0 netns "$(ns $i)"
        ip -n nines-sw link set "p$i" master br0 up
        ip -n "$(ns $i)" addr add "$NET.$((i + 1))/24" dev eth0
        ip -n "$(ns $i)" link set eth0 up
        ip -n "$(ns $i)" link set lo up
    done
    head -c 32 /dev/urandom >"$DIR/cluster.key"
    chmod 600 "$DIR/cluster.key"
    # Fencing a node = killing every process in its namespace, and confirming none is left.
    local fence='n=nines-h${NINES_FENCE_NODE#node-}; for _ in $(seq 200); do p=$(ip netns pids $n); [ -z "$p" ] && exit 0; kill -KILL $p 2>/dev/null; sleep 0.01; done; exit 1'
    in_ns 0 setsid "$NINES" director "$config" --listen "$NET.1:$PORT" \
        --key "$DIR/cluster.key" --fence-command "$fence" --state-dir "$DIR/director" -v \
        >"$DIR/director.log" 2>&1 </dev/null &
    for i in 1 2 3; do start "$i"; done
    echo "local-cluster: director on $NET.1:$PORT, node-1..3 on $NET.2-4; log in $DIR/*.log"
    echo "local-cluster: try: scripts/local-cluster.sh status; ... kill 1; ... status; ... start 1"
}

start() {
    local i=$1
    [[ "$i" =~ ^[1-3]$ ]] || die "node number 1-3 expected, got '$i'"
    in_ns "$i" setsid "$NINES" agent --node "node-$i" --director "$NET.1:$PORT" \
        --key "$DIR/cluster.key" --state-dir "$DIR/node-$i" -v \
        >>"$DIR/node-$i.log" 2>&1 </dev/null &
}

kill_node() {
    local i=$1
    [[ "$i" =~ ^[1-3]$ ]] || die "node number 1-3 expected, got '$i'"
    ip netns pids "$(ns "$i")" | xargs -r kill -KILL
    echo "local-cluster: node-$i is down (every process in $(ns "$i") killed)"
}

probe() {
    for i in 1 2 3; do
        local answer
        answer=$(in_ns 0 bash -c "exec 3<>/dev/tcp/$NET.$((i + 1))/7100 && echo inc >&3 && timeout 1 head -n1 <&3" 2>/dev/null || true)
        echo "node-$i ($NET.$((i + 1)):7100): ${answer:-no answer}"
    done
}

down() {
    for i in 0 1 2 3; do
        ip netns pids "$(ns $i)" 2>/dev/null | xargs -r kill -KILL || true
        ip netns del "$(ns $i)" 2>/dev/null || true
    done
    ip netns del nines-sw 2>/dev/null || true
    echo "local-cluster: down (state and logs kept in $DIR)"
}

case "${1:-}" in
up) shift; up "$@" ;;
status) "$NINES" status --state-dir "$DIR/director" ;;
probe) probe ;;
kill) kill_node "${2:-}" ;;
start) start "${2:-}" ;;
down) down ;;
*) die "usage: $0 up [CONFIG] | status | probe | kill N | start N | down" ;;
esac
