#!/usr/bin/env bash
# Status page in a real browser: starts a gateway on a fresh development PKI
# and a temporary data folder, pushes the example batch (with rejects) as
# supplier-a, loads the status page in headless Chromium (Debian's `chromium`,
# installed with apt-get when missing), checks the rendered DOM, and keeps a
# phone-sized screenshot as the artefact: target/status-page.png.
#
# Usage: scripts/status-page-test.sh
# The gateway binds both ports on 127.0.0.1:0 and writes what it bound to a
# ports file (`serve --ports-file`): no fixed port, no pick-then-bind race.
set -euo pipefail
cd "$(dirname "$0")/.."

SHOT="${SHOT:-target/status-page.png}"

if ! command -v chromium >/dev/null; then
    echo "installing chromium from Debian..."
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

cargo build --quiet --bin schakel
BIN="$PWD/target/debug/schakel"

WORK="$(mktemp -d)"
GATEWAY_PID=""
cleanup() {
    if [ -n "$GATEWAY_PID" ]; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" certs dev --dir "$WORK/certs" >/dev/null
C="$WORK/certs"
cat >"$WORK/schakel.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$WORK/data"

[tls]
cert = "$C/server.pem"
key = "$C/server.key"
client_ca = "$C/ca.pem"

[ops]
http_listen = "127.0.0.1:0"

[[suppliers]]
id = "supplier-a"
name = "Supplier A (status test)"

[[suppliers]]
id = "supplier-b"
name = "Supplier B (status test)"

[[identities]]
role = "supplier"
supplier_id = "supplier-a"
name = "supplier-a"
cert = "$C/supplier-a.pem"

[[identities]]
role = "supplier"
supplier_id = "supplier-b"
name = "supplier-b"
cert = "$C/supplier-b.pem"

[[identities]]
role = "registry"
name = "registry"
cert = "$C/registry.pem"

[[identities]]
role = "admin"
name = "admin"
cert = "$C/admin.pem"
TOML

"$BIN" serve --config "$WORK/schakel.toml" --ports-file "$WORK/ports" 2>"$WORK/gateway.log" &
GATEWAY_PID=$!

for _ in $(seq 1 600); do
    [ -s "$WORK/ports" ] && break
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        echo "FAIL: the gateway did not start"; cat "$WORK/gateway.log"; exit 1
    fi
    sleep 0.1
done
[ -s "$WORK/ports" ] || { echo "FAIL: the gateway did not bind its ports"; exit 1; }
GRPC_PORT=$(sed -n 's/^grpc=.*://p' "$WORK/ports")
HTTP_PORT=$(sed -n 's/^http=.*://p' "$WORK/ports")

URL="http://127.0.0.1:$HTTP_PORT/"
for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$URL" 2>/dev/null; then break; fi
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        echo "FAIL: the gateway did not start"; cat "$WORK/gateway.log"; exit 1
    fi
    sleep 0.1
done

# The example batch: 2 accepted, 1 duplicate, 3 rejected (exit 2: some rejected).
set +e
"$BIN" push examples/batch-2021-03-04.json --server "https://localhost:$GRPC_PORT" \
    --ca "$C/ca.pem" --cert "$C/supplier-a.pem" --key "$C/supplier-a.key" >"$WORK/receipt.txt"
rc=$?
set -e
if [ "$rc" != 2 ]; then
    echo "FAIL: push exited $rc (expected 2: some records rejected)"; cat "$WORK/receipt.txt"; exit 1
fi

chrome() {
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d -p "$WORK")" "$@" 2>>"$WORK/chromium.log"
}
chrome --dump-dom "$URL" >"$WORK/dom.html"
mkdir -p "$(dirname "$SHOT")"
rm -f "$SHOT"
chrome --screenshot="$PWD/$SHOT" --window-size=412,900 --hide-scrollbars "$URL" >/dev/null

passed=0
failed=0
check() { # description, fixed string expected in the DOM
    if grep -qF -- "$2" "$WORK/dom.html"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); echo "FAIL: $1 (no '$2' in the page)"
    fi
}
check "title" "<h1>Schakel status</h1>"
check "phone viewport" 'name="viewport"'
check "supplier-a row" 'data-supplier="supplier-a"'
check "supplier-a delivered today" '<td class="ok">delivered today</td>'
check "supplier-b not yet today" '<td class="muted">not yet today</td>'
check "queue depth" 'Queue depth<b>2</b>'
check "oldest record age" 'id="oldest-age"'
check "rejects by code" '<code>BSN_CHECKSUM</code>'
check "rejects by code" '<code>PII_WITHOUT_CONSENT</code>'
check "certificates section" 'Certificates expiring within 30 days'
if grep -qE '249566758|[Gg]eboortedatum' "$WORK/dom.html"; then
    failed=$((failed + 1)); echo "FAIL: personal data on the status page"
else
    passed=$((passed + 1))
fi
if [ -s "$SHOT" ] && [ "$(head -c 8 "$SHOT" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: no PNG screenshot at $SHOT"
fi

# The same facts through the admin CLI (Operations service).
ADMIN=(--server "https://localhost:$GRPC_PORT" --ca "$C/ca.pem" --cert "$C/admin.pem" --key "$C/admin.key")
"$BIN" ops "${ADMIN[@]}" deliveries --json >"$WORK/deliveries.json"
if grep -q '"delivered_today": true' "$WORK/deliveries.json" && grep -q '"code": "BSN_CHECKSUM"' "$WORK/deliveries.json"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: schakel ops deliveries"; cat "$WORK/deliveries.json"
fi
if "$BIN" ops "${ADMIN[@]}" dead-letters list | grep -q "no dead letters"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: schakel ops dead-letters list"
fi

# Every log line of a batch names the supplier and the batch id (span fields).
if grep -F "batch received" "$WORK/gateway.log" | grep -qE 'supplier=supplier-a.*batch='; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL: the batch's log line lacks supplier/batch"; cat "$WORK/gateway.log"
fi

# A figure, not a check: the time of 50 scrapes of /metrics and of the page.
t0=$(date +%s%N)
for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/metrics"; done
t1=$(date +%s%N)
for _ in $(seq 1 50); do curl -fsS -o /dev/null "$URL"; done
t2=$(date +%s%N)
echo "50 x /metrics: $(( (t1 - t0) / 1000000 )) ms; 50 x status page: $(( (t2 - t1) / 1000000 )) ms (debug build, curl included)"

echo "screenshot: $SHOT"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
