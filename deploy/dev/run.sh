#!/usr/bin/env bash
# `make run`: a private nats-server with its store under var/, then the services
# on SQLite read models under var/. Ctrl-C stops everything.
set -euo pipefail
VAR=$1 NATS_PORT=$2 GRPC_ADDR=$3 METRICS_ADDR=$4
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
mkdir -p "$VAR/nats" "$VAR/log"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$VAR/nats" -l "$VAR/log/nats-server.log" &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break
  sleep 0.1
done

cd "$ROOT"
NATS_URL=nats://127.0.0.1:$NATS_PORT \
DATABASE_URL="sqlite://$VAR/sample-ledger.db?mode=rwc" \
GRPC_ADDR=$GRPC_ADDR METRICS_ADDR=$METRICS_ADDR \
"$BIN/sample-ledger" > "$VAR/log/sample-ledger.log" 2>&1 &
pids+=($!)

cat <<TXT

Gridwork dev mesh is up (Ctrl-C stops it)
  nats-server     nats://127.0.0.1:$NATS_PORT   store: $VAR/nats   log: $VAR/log/nats-server.log
  sample-ledger   grpc://$GRPC_ADDR   metrics: http://$METRICS_ADDR/metrics   log: $VAR/log/sample-ledger.log
                  read model: $VAR/sample-ledger.db (SQLite, WAL)

Try it with grpcurl (server reflection is on):
  grpcurl -plaintext $GRPC_ADDR grpc.health.v1.Health/Check
  grpcurl -plaintext -d '{"command_id":"$(cat /proc/sys/kernel/random/uuid)","account_id":"demo","owner":"Wang"}' $GRPC_ADDR gridwork.sample.v1.LedgerService/OpenAccount
  grpcurl -plaintext -d '{"command_id":"$(cat /proc/sys/kernel/random/uuid)","account_id":"demo","amount":500}' $GRPC_ADDR gridwork.sample.v1.LedgerService/Deposit
  grpcurl -plaintext -d '{"account_id":"demo"}' $GRPC_ADDR gridwork.sample.v1.LedgerService/GetAccount
TXT
wait -n "${pids[@]}"
