#!/bin/sh
# Entry point of a RabbitMQ node in deploy/compose.yaml: put the shared Erlang
# cookie, the TLS files and the users' definitions where the node reads them,
# owned by the rabbitmq user (compose mounts secrets with the host's owner),
# then start the image's own entry point, which drops to that user.
set -eu
install -m 0400 -o rabbitmq -g rabbitmq /run/secrets/erlang_cookie /var/lib/rabbitmq/.erlang.cookie
install -d -m 0750 -o rabbitmq -g rabbitmq /etc/rabbitmq/tls
install -m 0444 /run/secrets/ca.pem /etc/rabbitmq/tls/ca.pem
install -m 0444 /run/secrets/rabbitmq_tls_cert /etc/rabbitmq/tls/cert.pem
install -m 0400 -o rabbitmq -g rabbitmq /run/secrets/rabbitmq_tls_key /etc/rabbitmq/tls/key.pem
install -m 0440 -o root -g rabbitmq /run/secrets/rabbitmq_users.json \
    /etc/rabbitmq/definitions/00-users.json
exec docker-entrypoint.sh rabbitmq-server
