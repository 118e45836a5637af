#!/usr/bin/env bash
# A private CA and one certificate for a gati cluster's TLS (`tls` in CLUSTER.json,
# `gati up --tls-*`), made with openssl. For trials and small deployments; use your own PKI
# where you have one.
#
#   scripts/make-certs.sh OUT_DIR [HOST_NAME ...]
#
# OUT_DIR gets ca.pem (give to every role and to clients), ca.key (keep it offline), cert.pem and
# key.pem (every role presents them; valid for localhost, 127.0.0.1 and each HOST_NAME: the names
# roles are dialled by, e.g. frontend base cache-0). Valid 365 days.
set -euo pipefail
out=${1:?usage: scripts/make-certs.sh OUT_DIR [HOST_NAME ...]}
shift
mkdir -p "$out"
cd "$out"
san="DNS:localhost,IP:127.0.0.1"
for n in "$@"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+=",IP:$n"; else san+=",DNS:$n"; fi
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=gati cluster CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=gati" \
    -keyout key.pem -out cert.csr 2>/dev/null
openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out cert.pem \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san") 2>/dev/null
rm -f cert.csr ca.srl
chmod 600 ca.key key.pem
echo "make-certs: $out/{ca.pem,cert.pem,key.pem} for $san" >&2
