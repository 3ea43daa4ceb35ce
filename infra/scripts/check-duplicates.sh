#!/usr/bin/env bash
# Fails when a second version of a crate the project chose appears in the normal (shipped)
# dependency graph: two copies cost build time and binary size, and for the hash crates,
# two implementations of one algorithm (README, "Development").
set -euo pipefail
cd "$(dirname "$0")/../.."
chosen="hmac sha2 digest tokio reqwest serde serde_json hyper aws-config aws-sdk-dynamodb aws-sdk-s3 aws-sdk-sqs aws-sdk-ssm lambda_http tracing tracing-subscriber bytes url uuid"
duplicates="$(cargo tree --workspace --locked -e normal --duplicates --depth 0 --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u)"
found=0
for crate in $chosen; do
	if grep -qx "$crate" <<<"$duplicates"; then
		echo "check-duplicates: more than one version of $crate:" >&2
		cargo tree --workspace --locked -e normal --invert "$crate" --depth 1 2>&1 | head -20 >&2 || true
		found=1
	fi
done
exit "$found"
