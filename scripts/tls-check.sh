#!/usr/bin/env bash
# Checks the TLS the gateway really serves, from the outside, with OpenSSL's
# s_client (and sslscan when installed): only TLS 1.2 and 1.3, no weak cipher
# suites, and a client certificate required. Starts its own gateway on a free
# port with the dev certificates and a temp data folder.
#
# Usage: scripts/tls-check.sh [path/to/schakel]   (default: target/debug/schakel)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/schakel}
[ -x "$bin" ] || cargo build --quiet
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

# The gateway binds port 0 itself (gRPC and the operations port) and writes
# what it bound to a ports file: no fixed port, no pick-then-bind race.
data=$(mktemp -d)
printf '[ops]\nhttp_listen = "127.0.0.1:0"\n' >"$data/schakel.toml"
"$bin" serve --config "$data/schakel.toml" --listen 127.0.0.1:0 --data-dir "$data" \
  --ports-file "$data/ports" >"$data/gateway.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 600); do
  [ -s "$data/ports" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "tls-check: the gateway did not start"; cat "$data/gateway.log"; exit 1; }
  sleep 0.1
done
port=$(sed -n 's/^grpc=.*://p' "$data/ports")
[ -n "$port" ] || { echo "tls-check: the gateway did not bind its port"; cat "$data/gateway.log"; exit 1; }

pass=0; fail=0
check() { # description, expected (ok|refused), s_client arguments...
  local what=$1 want=$2; shift 2
  local out
  out=$(printf 'x' | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
        -CAfile certs-dev/ca.pem -verify_return_error -ign_eof "$@" 2>&1 | tr -d '\0' || true)
  local got=refused
  # A handshake that completed and was not then refused (TLS 1.3 reports a
  # refused client certificate after the handshake, as an alert) shows a
  # negotiated protocol and cipher and no alert. The gateway then closes the
  # connection because "x" is no HTTP/2 preface: that EOF is expected.
  if grep -q "^ *Protocol *: TLSv1\.[23]" <<<"$out" && grep -q "Verify return code: 0 (ok)" <<<"$out" \
     && ! grep -qiE "alert|Cipher is \(NONE\)|Cipher *: 0000" <<<"$out"; then
    got=ok
  fi
  if [ "$got" = "$want" ]; then
    pass=$((pass + 1)); echo "ok      $what"
  else
    fail=$((fail + 1)); echo "FAILED  $what (wanted $want, got $got)"; sed 's/^/        | /' <<<"$out" | tail -15
  fi
}
client=(-cert certs-dev/supplier-a.pem -key certs-dev/supplier-a.key)

check "TLS 1.3 with a client certificate"           ok      -tls1_3 "${client[@]}"
check "TLS 1.2 with a client certificate"           ok      -tls1_2 "${client[@]}"
check "TLS 1.1 is refused"                          refused -tls1_1 -cipher 'DEFAULT@SECLEVEL=0' "${client[@]}"
check "TLS 1.0 is refused"                          refused -tls1   -cipher 'DEFAULT@SECLEVEL=0' "${client[@]}"
check "TLS 1.3 without a client certificate"        refused -tls1_3
check "TLS 1.2 without a client certificate"        refused -tls1_2
check "TLS 1.2 CBC suite (AES128-SHA) is refused"   refused -tls1_2 -cipher 'AES128-SHA:AES256-SHA' "${client[@]}"
check "TLS 1.2 non-forward-secret RSA kx refused"   refused -tls1_2 -cipher 'AES128-GCM-SHA256:AES256-GCM-SHA384' "${client[@]}"
check "TLS 1.2 3DES/RC4/NULL are refused"           refused -tls1_2 -cipher 'DES-CBC3-SHA:RC4-SHA:NULL-SHA256:@SECLEVEL=0' "${client[@]}"
check "TLS 1.2 ECDHE-ECDSA-AES128-GCM works"        ok      -tls1_2 -cipher 'ECDHE-ECDSA-AES128-GCM-SHA256' "${client[@]}"

if command -v sslscan >/dev/null; then
  echo "--- sslscan (informational)"
  sslscan --no-colour "127.0.0.1:$port" | grep -E "TLSv|Accepted|Preferred" || true
fi
echo "tls-check: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
