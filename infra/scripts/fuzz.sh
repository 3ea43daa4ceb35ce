#!/usr/bin/env bash
# make fuzz: property-based requests from the OpenAPI document (schemathesis) against the
# local stack as `make dev` serves it (the function binaries behind the local API Gateway):
# no 5xx; every status, content type, header and body inside the document; what it rules
# out refused, what it allows accepted, no route served without its key
# (infra/schemathesis.toml says where a check cannot apply, and why). The stack gets its
# own port, key, moto and state file, and is stopped (by its PID) afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-60}"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
key="igk_fuzz_$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
workdir="$(mktemp -d)"
DEV_PORT="$port" \
DEV_STATE_PATH="$workdir/dev-stack.json" \
DEV_API_KEYS="[{\"tenant\": \"fuzz\", \"key\": \"$key\", \"rate_per_minute\": 1000000}]" \
MOTO_SERVER="${MOTO_SERVER:-infra/scripts/moto-server}" \
RUST_LOG="${RUST_LOG:-error}" \
	target/debug/dev-server >"$workdir/dev.log" 2>&1 &
pid=$!
stop() {
	status=$?
	kill -INT "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	if [ "$status" -ne 0 ]; then
		echo "fuzz: the local stack's log:" >&2
		tail -n 200 "$workdir/dev.log" >&2 || true
	fi
	rm -rf "$workdir"
}
trap stop EXIT
trap 'exit 143' INT TERM
for _ in $(seq 1 240); do
	grep -q '^ready ' "$workdir/dev.log" && break
	if ! kill -0 "$pid" 2>/dev/null; then
		cat "$workdir/dev.log"
		exit 1
	fi
	sleep 0.5
done
if ! grep -q '^ready ' "$workdir/dev.log"; then
	echo "fuzz: the local stack did not start" >&2
	cat "$workdir/dev.log" >&2
	exit 1
fi
.venv/bin/st --config-file infra/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
	--header "Authorization: Bearer $key" \
	--max-time "$seconds" \
	--workers 2 \
	--request-timeout 35
