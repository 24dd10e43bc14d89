#!/usr/bin/env bash
# The secrets deploy/compose.yaml reads, written into deploy/compose/secrets/
# (or the folder given): a certification authority of the exchange's own,
# the TLS certificates it signs (RabbitMQ, PostgreSQL, the gateway, and the
# client certificate the processes present to RabbitMQ) and its revocation
# list, the Erlang cookie, every password, the URLs the processes read
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
    -subj "/O=lienthong/CN=lienthong exchange CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

certificate() {  # NAME USAGE CN [SAN...]
    local name="$1" usage="$2" cn="$3"; shift 3
    local extensions="extendedKeyUsage=$usage" san="" host
    for host in "$@"; do san="${san:+$san,}DNS:$host"; done
    [ -n "$san" ] && extensions="$extensions"$'\n'"subjectAltName=$san"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/${name}_tls_key" -out "$out/$name.csr" \
        -subj "/O=lienthong/CN=$cn" 2>/dev/null
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -days 730 -out "$out/${name}_tls_cert" \
        -extfile <(printf '%s\n' "$extensions") 2>/dev/null
    rm -f "$out/$name.csr"
}
# Clients reach the broker by the alias every node answers to (rabbitmq),
# nodes reach one another by their own names.
certificate rabbitmq serverAuth rabbitmq rabbitmq rabbitmq-1 rabbitmq-2 rabbitmq-3
certificate postgres serverAuth postgres-primary postgres-primary postgres-standby
certificate gateway serverAuth gateway gateway localhost
# The broker requires a client certificate of every connection
# (deploy/rabbitmq/rabbitmq.conf): the one the exchange's processes present;
# they log in with their own user and password.
certificate client clientAuth lienthong-exchange
rm -f "$out/ca.srl"

# The CA's revocation list (none revoked), which the broker checks client
# certificates against (deploy/rabbitmq/advanced.config): valid a year; make
# a new one before its nextUpdate (`openssl crl -noout -nextupdate -in ca.crl.pem`).
crl_work="$(mktemp -d)"
touch "$crl_work/index.txt"
echo 01 > "$crl_work/crlnumber"
cat > "$crl_work/ca.cnf" <<CNF
[ca]
default_ca = exchange
[exchange]
database = $crl_work/index.txt
crlnumber = $crl_work/crlnumber
default_md = sha256
default_crl_days = 365
CNF
openssl ca -config "$crl_work/ca.cnf" -gencrl -keyfile "$out/ca.key" -cert "$out/ca.pem" \
    -out "$out/ca.crl.pem" 2>/dev/null
rm -rf "$crl_work"

# -- passwords ----------------------------------------------------------------
password > "$out/erlang_cookie"
for name in postgres_password postgres_replication_password postgres_lienthong_password \
        rabbitmq_lienthong_password rabbitmq_gateway_password rabbitmq_admin_password \
        grafana_admin_password; do
    password > "$out/$name"
done

# -- what the processes read --------------------------------------------------
# amqps:// on 5671 with the CA and the client certificate (aio-pika's
# cafile, certfile, keyfile); the database on the primary and the standby,
# whichever accepts writes.
tls='cafile=/run/secrets/ca.pem&certfile=/run/secrets/client_tls_cert&keyfile=/run/secrets/client_tls_key'
printf 'amqps://lienthong:%s@rabbitmq:5671/?%s\n' \
    "$(cat "$out/rabbitmq_lienthong_password")" "$tls" > "$out/amqp_url"
printf 'amqps://lienthong-gateway:%s@rabbitmq:5671/?%s\n' \
    "$(cat "$out/rabbitmq_gateway_password")" "$tls" > "$out/gateway_amqp_url"
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
