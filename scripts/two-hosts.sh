#!/bin/bash
# Runs a program as two hosts on this one machine: two network namespaces joined by a veth
# pair, each with its own host name, one `oxrun -n RANKS --nnodes 2` in each (node 0 serves
# the rendezvous store). Shared memory within a "host", TCP over the veth pair between them,
# as tests/multihost.rs does. Needs root and iproute2; cleans up after itself.
#
#   scripts/two-hosts.sh RANKS_PER_HOST PROGRAM [ARGS...]
#   scripts/two-hosts.sh 2 target/release/oxccl-bench --explain -b 64K -e 16M
#   scripts/two-hosts.sh 2 target/release/examples/plan --hosts 2 --ranks-per-host 2 --replay
#
# Host 0's output goes to stdout, host 1's to stderr prefixed "host1: " (rank 0 prints the
# results). OXRUN (default target/release/oxrun) names the launcher.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
ranks=$1; shift
oxrun=$(realpath "${OXRUN:-target/release/oxrun}")
prog=$(realpath "$1"); shift
id=$(( ($$ % 200) + 20 ))
a=oxha$id; b=oxhb$id; va=oxhva$id; vb=oxhvb$id
cleanup() { ip netns del $a 2>/dev/null || true; ip netns del $b 2>/dev/null || true; }
trap cleanup EXIT
ip netns add $a; ip netns add $b
ip link add $va type veth peer name $vb
ip link set $va netns $a; ip link set $vb netns $b
ip -n $a addr add 10.78.$id.1/24 dev $va; ip -n $b addr add 10.78.$id.2/24 dev $vb
for ns in $a $b; do ip -n $ns link set lo up; done
ip -n $a link set $va up; ip -n $b link set $vb up
master=10.78.$id.1:29700
export OXCCL_SECRET=${OXCCL_SECRET:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
unset OXCCL_HOST_ID
args=$(printf '%q ' "$@")
run() { ip netns exec "$1" unshare --uts sh -c "hostname $1 && exec $oxrun -n $ranks --nnodes 2 --node-rank $2 --master $master $prog $args"; }
run $b 1 2> >(sed 's/^/host1: /' >&2) > >(sed 's/^/host1: /' >&2) &
pid=$!
run $a 0
wait $pid
