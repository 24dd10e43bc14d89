#!/bin/sh
# Entry point of a RabbitMQ node in deploy/compose.yaml: put the shared Erlang
# cookie, the TLS files deploy/rabbitmq/rabbitmq.conf and advanced.config name
# and the users' definitions where the node reads them, owned by the
# rabbitmq user (compose mounts secrets with the host's owner), then start
# the image's own entry point, which drops to that user.
set -eu
install -m 0400 -o rabbitmq -g rabbitmq /run/secrets/erlang_cookie /var/lib/rabbitmq/.erlang.cookie
tls=/etc/rabbitmq/tls
install -d -m 0755 "$tls" "$tls/crl"
# Client certificates accepted: the exchange's own CA, and the agencies' CAs
# of deploy/compose/trust/ (the same anchors the workers check signatures
# against), each with its revocation list.
cat /run/secrets/ca.pem /etc/lienthong/trust/*.pem > "$tls/ca.pem" 2>/dev/null || true
install -m 0644 /run/secrets/rabbitmq_tls_cert "$tls/broker.pem"
install -m 0400 -o rabbitmq -g rabbitmq /run/secrets/rabbitmq_tls_key "$tls/broker.key"
install -m 0644 /run/secrets/ca.crl.pem "$tls/crl/lienthong.crl.pem"
for crl in /etc/lienthong/trust/*.crl /etc/lienthong/trust/*.crl.pem; do
    [ -f "$crl" ] && install -m 0644 "$crl" "$tls/crl/"
done
# The names Erlang's ssl_crl_hash_dir looks CRLs up by.
openssl rehash "$tls/crl"
install -d -m 0755 /etc/rabbitmq/definitions
install -m 0440 -o root -g rabbitmq /run/secrets/rabbitmq_users.json \
    /etc/rabbitmq/definitions/00-users.json
exec docker-entrypoint.sh rabbitmq-server
