#!/usr/bin/env bash
# Runs the built services natively against local PostgreSQL and RabbitMQ,
# creating their databases when missing. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
export CREATE_DATABASE=true
# Each service listens on its own default port with its own database
# (orders 3333, invoices 3334); BROKER_URL, OTEL_* and LOG_LEVEL apply to all.
unset PORT DATABASE_URL
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
for svc in orders invoices; do
  [ -x "bin/$svc" ] || continue
  "bin/$svc" &
  pids+=($!)
done
echo "orders on http://127.0.0.1:3333, invoices on http://127.0.0.1:3334 (Ctrl-C stops)" >&2
wait -n "${pids[@]}"
