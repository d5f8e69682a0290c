#!/usr/bin/env bash
# NAT lab: two home mirrors, each behind its own NAT router (nftables
# masquerade, unsolicited inbound dropped), and an "internet" with the master
# and a relay. Both mirrors sync a version; the script reports whether they
# reached each other directly (DCUtR hole punching) and the share of the
# bytes between them that went through the relay.
#
#   lab.sh PEERMIRROR_BINARY WORKDIR [MIB]
#
# Needs root, ip (iproute2) and nft; exits 77 (skipped) without them. Every
# address is inside the namespaces it creates (10.99.0.0/24 internet,
# 10.1.0.0/24 and 10.2.0.0/24 homes); all of it is torn down on exit.
#
#   internet (bridge)  master 10.99.0.10   relay 10.99.0.11
#        |                     |
#   routerA 10.99.0.2    routerB 10.99.0.3      (masquerade)
#        |                     |
#   homeA 10.1.0.2       homeB 10.2.0.2
set -euo pipefail

BIN=${1:?peermirror binary}
WORK=${2:?work directory}
MIB=${3:-48}
# The master's uplink: slow enough that the mirrors gain by trading.
MASTER_RATE=${MASTER_RATE:-80mbit}

skip() { echo "SKIPPED: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "not root"
command -v ip >/dev/null || skip "no ip (iproute2)"
command -v nft >/dev/null || skip "no nft (nftables)"

P="pmn$$-"
NS=(inet master relay routerA routerB homeA homeB)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for n in "${NS[@]}"; do ip netns del "$P$n" 2>/dev/null || true; done
}
trap cleanup EXIT
for n in "${NS[@]}"; do ip netns add "$P$n" || skip "cannot create network namespaces"; done
for n in "${NS[@]}"; do ip -n "$P$n" link set lo up; done
nsx() { local n=$1; shift; ip netns exec "$P$n" "$@"; }

# The internet: a bridge in its own namespace, one port per host.
ip -n "${P}inet" link add br0 type bridge
ip -n "${P}inet" link set br0 up
link() { # host ifname address/len bridge-port
  ip link add "$2" netns "$P$1" type veth peer name "$4" netns "${P}inet"
  ip -n "${P}inet" link set "$4" master br0 up
  ip -n "$P$1" addr add "$3" dev "$2"
  ip -n "$P$1" link set "$2" up
}
link master eth0 10.99.0.10/24 pm
link relay eth0 10.99.0.11/24 pr
link routerA wan 10.99.0.2/24 pa
link routerB wan 10.99.0.3/24 pb

# Homes behind their routers.
home() { # home router lan-net
  ip link add eth0 netns "$P$1" type veth peer name lan netns "$P$2"
  ip -n "$P$2" addr add "$3.1/24" dev lan
  ip -n "$P$1" addr add "$3.2/24" dev eth0
  ip -n "$P$2" link set lan up
  ip -n "$P$1" link set eth0 up
  ip -n "$P$1" route add default via "$3.1"
  nsx "$2" sysctl -qw net.ipv4.ip_forward=1
  # Masquerade out of wan; nothing unsolicited gets in (to the router or
  # the home), as on a home router.
  nsx "$2" nft -f - <<EOF
table ip nat {
  chain post {
    type nat hook postrouting priority 100;
    oifname "wan" masquerade;
  }
}
table inet filter {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept;
    iifname { "lo", "lan" } accept;
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept;
    iifname "lan" accept;
  }
}
EOF
}
home homeA routerA 10.1.0
home homeB routerB 10.2.0
# Bytes between the two homes' public addresses, as routerA forwards them.
nsx routerA nft -f - <<'EOF'
table inet count {
  counter direct { }
  chain tally {
    type filter hook forward priority -10;
    ip daddr 10.99.0.3 counter name direct;
    ip saddr 10.99.0.3 counter name direct;
  }
}
EOF
nsx master tc qdisc add dev eth0 root tbf rate "$MASTER_RATE" burst 256kb latency 50ms \
  || echo "note: no tc shaping on the master"

# Nodes. Every node may use AutoNAT with peers at private addresses (the
# whole lab is private space); only the relay relays.
conf() { # dir [relay]
  mkdir -p "$1"
  cat >"$1/config.toml" <<EOF
[net]
listen = ["/ip4/0.0.0.0/tcp/4100", "/ip4/0.0.0.0/udp/4100/quic-v1"]
autonat_private = true
relay = ${2:-false}
[log]
level = "info,peermirror=debug,libp2p_dcutr=debug,libp2p_relay=info"
EOF
}
start() { # ns dir args...
  local n=$1 d=$2; shift 2
  nsx "$n" "$BIN" --data "$d" run "$@" >"$d/node.log" 2>&1 &
  PIDS+=($!)
}
peer_addr() { # dir ip
  local id
  for _ in $(seq 100); do
    id=$(sed -n 's/^peer id //p' "$1/node.log" | head -1)
    [ -n "$id" ] && break
    sleep 0.1
  done
  [ -n "$id" ] || { echo "no peer id in $1/node.log" >&2; cat "$1/node.log" >&2; exit 1; }
  echo "/ip4/$2/tcp/4100/p2p/$id"
}
status() { "$BIN" --data "$1" status --json 2>/dev/null || echo '{}'; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }

rm -rf "$WORK"; mkdir -p "$WORK"
KEYOUT=$("$BIN" keygen "$WORK/master.key")
C=$(echo "$KEYOUT" | tail -1 | tr -d '[:space:]')
mkdir -p "$WORK/src"
head -c $((MIB << 20)) /dev/urandom >"$WORK/src/big.img"
echo "small file" >"$WORK/src/readme.txt"

conf "$WORK/master"; conf "$WORK/relay" true; conf "$WORK/a"; conf "$WORK/b"
start master "$WORK/master"
start relay "$WORK/relay"
M=$(peer_addr "$WORK/master" 10.99.0.10)
R=$(peer_addr "$WORK/relay" 10.99.0.11)
start homeA "$WORK/a" --peer "$M" --peer "$R" --follow "$C"
start homeB "$WORK/b" --peer "$M" --peer "$R" --follow "$C"
A_ID=$(peer_addr "$WORK/a" x | sed 's/.*p2p.//')
B_ID=$(peer_addr "$WORK/b" x | sed 's/.*p2p.//')

# Each mirror: private, holding a relay slot, and connected to the other
# without the relay (hole punched) before anything is published.
echo "waiting for the mirrors to find out they are behind NAT and meet..."
path_between() { # dir other-id
  status "$1" | jq_py "
n=d.get('node') or {}
p=[x for x in n.get('peers',[]) if x['id']=='$2']
print(p[0]['path'] if p else 'none')"
}
t0=$(date +%s)
while :; do
  ra=$(status "$WORK/a" | jq_py "print((d.get('node') or {}).get('reachability',''))")
  rb=$(status "$WORK/b" | jq_py "print((d.get('node') or {}).get('reachability',''))")
  pa=$(path_between "$WORK/a" "$B_ID")
  pb=$(path_between "$WORK/b" "$A_ID")
  if [ "$pa" != none ] && [ "$pa" != relayed ] && [ "$pb" != none ] && [ "$pb" != relayed ]; then
    break
  fi
  if [ $(($(date +%s) - t0)) -gt 150 ]; then
    echo "FAIL: mirrors did not meet directly (a: $ra, path $pa; b: $rb, path $pb)"
    tail -n 30 "$WORK/a/node.log" "$WORK/b/node.log" "$WORK/relay/node.log"
    exit 1
  fi
  sleep 1
done
echo "a: $ra, b: $rb; path a->b: $pa, b->a: $pb after $(($(date +%s) - t0))s"

relay_bytes() { nsx relay cat /sys/class/net/eth0/statistics/rx_bytes; }
direct_bytes() { nsx routerA nft list counter inet count direct | sed -n 's/.*bytes \([0-9]*\).*/\1/p'; }
master_tx() { nsx master cat /sys/class/net/eth0/statistics/tx_bytes; }
r0=$(relay_bytes); d0=$(direct_bytes); m0=$(master_tx)

"$BIN" --data "$WORK/master" publish --key "$WORK/master.key" "$WORK/src" >/dev/null
t1=$(date +%s)
for d in a b; do
  while :; do
    v=$(status "$WORK/$d" | jq_py "
cs=[c for c in d.get('collections',[]) if c['id']=='$C']
print((cs[0].get('current') or {}).get('version',0) if cs else 0)")
    [ "$v" -ge 1 ] && break
    if [ $(($(date +%s) - t1)) -gt 240 ]; then
      echo "FAIL: mirror $d did not sync"; tail -n 30 "$WORK/$d/node.log"; exit 1
    fi
    sleep 0.5
  done
done
secs=$(($(date +%s) - t1))
r1=$(relay_bytes); d1=$(direct_bytes); m1=$(master_tx)
relayed=$((r1 - r0)); direct=$((d1 - d0)); master=$((m1 - m0))
total=$((MIB << 20))
share=$(python3 -c "r=$relayed; d=$direct; print(f'{100*r/max(r+d,1):.1f}')")
echo "synced ${MIB} MiB on both mirrors in ${secs}s"
echo "master sent $((master >> 10)) KiB ($(python3 -c "print(f'{$master/$total:.2f}')") copies)"
echo "between the mirrors: direct $((direct >> 10)) KiB, through the relay $((relayed >> 10)) KiB"
echo "relay share of the bytes between the mirrors: ${share}%"
"$BIN" --data "$WORK/a" status || true

# What holds reliably: both synced (above); the mirrors met directly; the
# relay carried no bulk (its circuits are capped at 1 MiB each); the
# mirrors exchanged data directly.
fail=0
if [ "$relayed" -gt $((8 << 20)) ]; then
  echo "FAIL: the relay carried $relayed bytes"; fail=1
fi
if [ "$direct" -lt $((256 << 10)) ]; then
  echo "FAIL: the mirrors exchanged only $direct bytes directly"; fail=1
fi
[ $fail = 0 ] && echo "PASS"
exit $fail
