#!/usr/bin/env bash
# The secrets deploy/compose.yaml reads, written into deploy/compose/secrets/
# (or the folder given): a certification authority of the exchange's own
# servers and the TLS certificates it signs (RabbitMQ, PostgreSQL, the
# gateway), the Erlang cookie, every password, the URLs the processes read
# (LIENTHONG_*_URL_FILE) and RabbitMQ's users. For a test or a first
# installation; in production the certificates come from the
# organisation's CA and the passwords from its vault, under the same names.
#
#   bash deploy/compose/make-secrets.sh [FOLDER]
#
# Needs openssl and python3 (the standard library only). Refuses to
# overwrite a folder that already holds secrets.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/secrets}"
if [ -e "$out/ca.pem" ]; then
    echo "make-secrets.sh: $out already holds secrets; remove it first to make new ones" >&2
    exit 2
fi
mkdir -p "$out"
chmod 700 "$out"
umask 077

password() { openssl rand -hex 24; }

# -- certificates -------------------------------------------------------------
# ECDSA P-256 everywhere: small, fast, accepted by Erlang/OTP, libpq,
# asyncpg and uvicorn alike. Ten years for the CA, two for the servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.pem" -days 3650 \
    -subj "/O=lienthong/CN=lienthong servers CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

server_certificate() {  # NAME SAN...
    local name="$1"; shift
    local san="" host
    for host in "$@"; do san="${san:+$san,}DNS:$host"; done
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/${name}_tls_key" -out "$out/$name.csr" \
        -subj "/O=lienthong/CN=$1" 2>/dev/null
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -days 730 -out "$out/${name}_tls_cert" \
        -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san") \
        2>/dev/null
    rm -f "$out/$name.csr"
}
# Clients reach the broker by the alias every node answers to (rabbitmq),
# nodes reach one another by their own names.
server_certificate rabbitmq rabbitmq rabbitmq-1 rabbitmq-2 rabbitmq-3
server_certificate postgres postgres-primary postgres-standby
server_certificate gateway gateway localhost
rm -f "$out/ca.srl"

# -- passwords ----------------------------------------------------------------
password > "$out/erlang_cookie"
for name in postgres_password postgres_replication_password postgres_lienthong_password \
        rabbitmq_lienthong_password rabbitmq_gateway_password rabbitmq_admin_password \
        grafana_admin_password; do
    password > "$out/$name"
done

# -- what the processes read --------------------------------------------------
# amqps:// on 5671 with the CA (aiormq's cafile query parameter); the
# database on the primary and the standby, whichever accepts writes.
printf 'amqps://lienthong:%s@rabbitmq:5671/?cafile=/run/secrets/ca.pem\n' \
    "$(cat "$out/rabbitmq_lienthong_password")" > "$out/amqp_url"
printf 'amqps://lienthong-gateway:%s@rabbitmq:5671/?cafile=/run/secrets/ca.pem\n' \
    "$(cat "$out/rabbitmq_gateway_password")" > "$out/gateway_amqp_url"
printf 'https://lienthong-admin:%s@rabbitmq:15671\n' \
    "$(cat "$out/rabbitmq_admin_password")" > "$out/rabbitmq_api_url"
printf 'postgresql://lienthong:%s@postgres-primary:5432,postgres-standby:5432/lienthong?sslmode=verify-full&sslrootcert=/run/secrets/ca.pem&target_session_attrs=read-write\n' \
    "$(cat "$out/postgres_lienthong_password")" > "$out/database_url"

# -- RabbitMQ's users ---------------------------------------------------------
# Imported at boot with deploy/rabbitmq/definitions.json (a node that imports
# definitions creates no default user or vhost). Passwords as RabbitMQ
# stores them: base64(salt + SHA-256(salt + password)), a 4-byte salt. The
# gateway's permissions are exchange.broker.topology.gateway_permissions()
# (tests/unit/test_deploy_files.py checks they agree).
OUT="$out" python3 - <<'PY'
import base64, hashlib, json, os, pathlib

out = pathlib.Path(os.environ["OUT"])

def user(name, secret, tags):
    salt = os.urandom(4)
    password = (out / secret).read_text().strip().encode()
    digest = hashlib.sha256(salt + password).digest()
    return {
        "name": name,
        "password_hash": base64.b64encode(salt + digest).decode(),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
    }

definitions = {
    "vhosts": [{"name": "/"}],
    "users": [
        user("lienthong", "rabbitmq_lienthong_password", []),
        user("lienthong-gateway", "rabbitmq_gateway_password", []),
        user("lienthong-admin", "rabbitmq_admin_password", ["administrator"]),
    ],
    "permissions": [
        {"user": "lienthong", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
        {
            "user": "lienthong-gateway",
            "vhost": "/",
            "configure": "^$",
            "write": "^lienthong\\.submit$",
            "read": "^lienthong\\.(inbox|status)\\..+$",
        },
        {"user": "lienthong-admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
    ],
}
(out / "rabbitmq_users.json").write_text(json.dumps(definitions, indent=2) + "\n")
PY

# Containers read these files as users of their own (the image's 10001,
# rabbitmq, postgres; the start scripts copy the servers' keys into place
# with the owner each server wants): readable files in a folder only its
# owner may enter. ca.key signs new certificates and is mounted nowhere.
chmod 644 "$out"/*
chmod 600 "$out/ca.key"
echo "make-secrets.sh: secrets written to $out"
