#!/usr/bin/env bash
# The README tour as a test. Starts deploy/dev/run.sh (nats-server, the services on
# SQLite, the demo seed) on free ports with a temporary var/, then runs every gridctl
# line between README's `tour:begin` and `tour:end` markers, in order, twice in a row
# on that one mesh. A line that fails fails the test, with its output.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
VAR=$(mktemp -d)
MESH=

stop() {
  local status=$?
  # The mesh runs in its own process group: kill all of it, never by name.
  [ -n "$MESH" ] && kill -KILL -- "-$MESH" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for log in "$VAR"/log/*.log; do [ -f "$log" ] && { echo "--- tail of $log"; tail -n 20 "$log"; }; done
  fi
  rm -rf "$VAR"
}
trap stop EXIT

# Four consecutive free ports for gRPC, four for metrics, one for NATS.
free_block() {
  python3 - "$1" <<'PY'
import socket, sys
n = int(sys.argv[1])
import random
for base in random.sample(range(21000, 60000, 97), 400):
    try:
        socks = []
        for p in range(base, base + n):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        for s in socks: s.close()
PY
}
GRPC=$(free_block 9)
[ -n "$GRPC" ] || { echo "tour: no nine free ports in a row"; exit 1; }
export GRPC_PORT_BASE=$GRPC METRICS_PORT_BASE=$((GRPC + 4))
NATS_PORT=$((GRPC + 8))
# gridctl login keeps the development key and the token in the mesh's var/.
export GRIDWORK_VAR=$VAR
export GRIDCTL_REGISTRY=http://127.0.0.1:$((GRPC + 1)) GRIDCTL_INTAKE=http://127.0.0.1:$((GRPC + 2)) \
  GRIDCTL_DISPATCH=http://127.0.0.1:$((GRPC + 3))

EXIT_WITH_PID=$$ setsid "$ROOT/deploy/dev/run.sh" "$VAR" "$NATS_PORT" > "$VAR/run.out" 2>&1 &
MESH=$!
disown "$MESH"
for _ in $(seq 1 1800); do
  grep -q "mesh is up" "$VAR/run.out" 2>/dev/null && break
  if ! kill -0 "$MESH" 2>/dev/null; then echo "tour: the mesh did not start:"; cat "$VAR/run.out"; exit 1; fi
  sleep 0.1
done
grep -q "mesh is up" "$VAR/run.out" || { echo "tour: the mesh did not come up in 180 s:"; cat "$VAR/run.out"; exit 1; }

# The gridctl lines of the tour: table cells and shell lines (continuations joined).
python3 - "$ROOT/README.md" > "$VAR/tour.txt" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
tour = text.split("<!-- tour:begin", 1)[1].split("<!-- tour:end", 1)[0]
tour = tour.replace("\\\n", " ")
for line in tour.splitlines():
    line = line.strip()
    m = re.match(r"\|\s*`(target/debug/gridctl [^`]*)`", line)
    if m:
        print(m.group(1))
    elif line.startswith("target/debug/gridctl "):
        print(re.sub(r"\s+#[^'\"]*$", "", line))
PY
lines=$(wc -l < "$VAR/tour.txt")
[ "$lines" -ge 15 ] || { echo "tour: only $lines gridctl lines found between the markers"; exit 1; }

for pass in 1 2; do
  ID=
  while IFS= read -r line; do
    cmd=${line/target\/debug\//$BIN/}
    if ! out=$(eval "$cmd" 2>&1); then
      echo "tour pass $pass failed: $line"; echo "$out"; exit 1
    fi
    if [[ $line == *"incidents report"* ]]; then
      ID=$(sed -n 's/^incident \([^ ]*\).*/\1/p' <<< "$out" | head -n1)
      [ -n "$ID" ] || { echo "tour pass $pass: no incident id in: $out"; exit 1; }
    fi
  done < "$VAR/tour.txt"
  echo "tour pass $pass: $lines gridctl lines ran"
done

# The checks below act as an administrator of the tree and the catalogue.
"$BIN/gridctl" login --subject tour --as registry-admin --as catalogue-admin --as triage --as dispatcher > /dev/null

# Nothing of the tour works without a token: no token, a malformed one or a
# forged one (a signature that is not the key's) is UNAUTHENTICATED, and writes nothing.
mv "$VAR/dev-token" "$VAR/dev-token.kept"
for token in "" "not-a-jwt" "$("$BIN/gridctl" login --as registry-admin --print | cut -d. -f1,2).forged"; do
  if out=$(GRIDWORK_TOKEN=$token "$BIN/gridctl" workers add hl-s0-c0-g00 rider-9 "Nobody" --role rider-informant 2>&1); then
    echo "tour: a call with token '${token:0:20}' was accepted: $out"; exit 1
  fi
  grep -q "Unauthenticated" <<< "$out" || { echo "tour: expected UNAUTHENTICATED, got: $out"; exit 1; }
done
mv "$VAR/dev-token.kept" "$VAR/dev-token"
if "$BIN/gridctl" units get hl-s0-c0-g00 | grep -q rider-9; then
  echo "tour: a refused call wrote something"; exit 1
fi
echo "tour: calls without a valid token are refused"
# Each service ran as its own NATS user and never reached beyond its subjects.
if grep -q "Violation" "$VAR/log/nats-server.log"; then
  grep "Violation" "$VAR/log/nats-server.log" | head -5 >&2
  echo "tour: a service used a NATS subject its user may not (deploy/nats/permissions.conf)"; exit 1
fi
grep -q "nkey" "$VAR/nats-users/users.conf" || { echo "tour: the mesh's nats-server names no users"; exit 1; }
echo "tour: every service ran as its own NATS user within its permissions"

# --output json: every line of an answer or a list is one JSON document, the
# proto3 mapping's field names; an error stays on stderr with a non-zero exit.
json_lines() {
  local what=$1 key=$2; shift 2
  local out
  out=$("$BIN/gridctl" --output json "$@") || { echo "tour: gridctl --output json $what failed: $out"; exit 1; }
  OUT="$out" python3 - "$what" "$key" <<'PY' || exit 1
import json, os, sys
what, key = sys.argv[1], sys.argv[2]
lines = [l for l in os.environ["OUT"].splitlines()]
if not lines:
    sys.exit(f"tour: --output json {what}: no output")
for l in lines:
    try:
        doc = json.loads(l)
    except ValueError as e:
        sys.exit(f"tour: --output json {what}: not JSON ({e}): {l!r}")
    if key not in doc:
        sys.exit(f"tour: --output json {what}: no {key!r} in {l!r}")
PY
}
json_lines "cases get" caseNumber cases get "$ID"
json_lines "incidents get" incidentId incidents get "$ID"
json_lines "cases list" caseId cases list --area hl-s0-c0
json_lines "units children" unitId units children hl
json_lines "incidents catalogue" categories incidents catalogue
if out=$("$BIN/gridctl" --output json cases get no-such-case 2>/dev/null); then
  echo "tour: gridctl --output json on a missing case succeeded: $out"; exit 1
fi
echo "tour: --output json prints one JSON document per line"

# What gridctl prints as JSON it reads back: the catalogue, republished as it
# is, is refused as unchanged (so it was read whole); a district registered from
# a boundary file is there to read.
"$BIN/gridctl" --output json incidents catalogue > "$VAR/catalogue.json"
if out=$("$BIN/gridctl" incidents publish-catalogue "$VAR/catalogue.json" 2>&1); then
  echo "tour: the catalogue republished unchanged was accepted: $out"; exit 1
fi
grep -q "unchanged" <<< "$out" || { echo "tour: republishing the catalogue: $out"; exit 1; }
echo '{"type":"Polygon","coordinates":[[[10.0,10.0],[10.1,10.0],[10.1,10.1],[10.0,10.1],[10.0,10.0]]]}' > "$VAR/zz.json"
"$BIN/gridctl" units register zz --kind district --name "Tour district" --boundary "$VAR/zz.json" > /dev/null
"$BIN/gridctl" units households zz 400 > /dev/null
json_lines "units get zz" households units get zz
echo "tour: catalogue and boundary files read back"

# A reader that goes away at once (`gridctl … | head`): gridctl ends quietly, no panic.
# (gridctl starts after the reader has exited, so its first write meets a closed pipe.)
if ! err=$( { sh -c 'sleep 0.3; exec "$0" units children hl' "$BIN/gridctl" | true; } 2>&1 ) || [ -n "$err" ]; then
  echo "tour: gridctl writing into a closed pipe: ${err:-non-zero exit}"; exit 1
fi
echo "tour: gridctl into a closed pipe ends quietly"
