#!/usr/bin/env bash
# Regenerate the WarpSocket development/test PKI.
#
#   ca.key / ca.pem         development CA ("WarpSocket Development CA")
#   server.key / server.pem server certificate for localhost, 127.0.0.1, ::1
#   other.key / other.pem   server certificate for "other.example" only
#                           (used by tests to show hostname verification fails)
#
# All keys are EC P-256, unencrypted PEM. THESE KEYS ARE PUBLIC: they are
# committed to the repository and must never be used outside development/tests.
#
# Runnable from any directory; files are written next to this script.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DIR"

DAYS=3650

cleanup() {
    rm -f ./*.srl ./*.csr ./*.cnf
}
trap cleanup EXIT

genkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# --- CA -------------------------------------------------------------------
cat > ca.cnf <<'EOF'
[req]
distinguished_name = dn
prompt             = no
x509_extensions    = v3_ca

[dn]
O  = WarpSocket
CN = WarpSocket Development CA

[v3_ca]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF

genkey ca.key
openssl req -new -x509 -sha256 -days "$DAYS" -key ca.key -config ca.cnf -out ca.pem

# --- leaf certificates ------------------------------------------------------
# issue NAME CN SAN
issue() {
    local name="$1" cn="$2" san="$3"
    cat > "$name.cnf" <<EOF
[req]
distinguished_name = dn
prompt             = no

[dn]
O  = WarpSocket
CN = $cn

[v3_server]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = $san
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid,issuer
EOF
    genkey "$name.key"
    openssl req -new -sha256 -key "$name.key" -config "$name.cnf" -out "$name.csr"
    openssl x509 -req -sha256 -days "$DAYS" \
        -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -extfile "$name.cnf" -extensions v3_server \
        -out "$name.pem"
}

issue server localhost "DNS:localhost, IP:127.0.0.1, IP:::1"
issue other other.example "DNS:other.example"

# Public development keys: make them readable by everyone (tests, containers).
chmod 644 ca.key ca.pem server.key server.pem other.key other.pem

openssl verify -CAfile ca.pem server.pem other.pem
