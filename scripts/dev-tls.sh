#!/usr/bin/env bash
# The development PKI and a broker that speaks TLS, for this machine's tests,
# demo and quick start (scripts/setup.sh runs this; safe to run again).
#
# - A development CA in $LIENTHONG_DEV_PKI (default /etc/lienthong/tls), made
#   with `lienthong keys`: the broker's server certificate (localhost,
#   127.0.0.1, ::1 and this host's name), the exchange's client certificate
#   (lienthong-exchange), and the CA's revocation list, renewed when it is
#   older than a day.
# - RabbitMQ: a TLS listener on 5671 that requires a client certificate from
#   that CA and checks it against the CRL; certificate logins (EXTERNAL, the
#   user being the certificate's subject); the management API over HTTPS on
#   15671 with an operator user of its own (lienthong-admin), and the
#   Prometheus endpoint on loopback. The listeners the machine already has
#   (plain AMQP and HTTP on loopback) stay for other tools; lienthong does not
#   use them.
# - /etc/lienthong/lienthong.env: the machine's settings (read by every
#   lienthong process, see docs/operations.md), pointing at all of the above.
# RabbitMQ restarts only when its TLS configuration changed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
lienthong=.venv/bin/lienthong
pki=${LIENTHONG_DEV_PKI:-/etc/lienthong/tls}
owner=${SUDO_USER:-$(id -un)}

as_root mkdir -p "$pki" /etc/lienthong
as_root chown "$owner" "$pki"
if [ ! -f "$pki/ca.key.pem" ]; then
  say "creating the development CA in $pki"
  "$lienthong" keys init --dir "$pki" --name "lienthong development CA" >/dev/null
fi
# A certificate that expires within 30 days is issued again.
fresh() { [ -f "$1" ] && openssl x509 -checkend $((30 * 86400)) -noout -in "$1" >/dev/null 2>&1; }
if ! fresh "$pki/broker.cert.pem"; then
  say "issuing the broker's TLS certificate"
  "$lienthong" keys server broker --dir "$pki" --host localhost --host 127.0.0.1 --host ::1 \
    --host "$(hostname)" >/dev/null
fi
if ! fresh "$pki/lienthong-exchange.cert.pem"; then
  "$lienthong" keys client lienthong-exchange --dir "$pki" >/dev/null
fi
# The CRL is valid for a week; renewed daily, so a verifier never holds a stale one.
if [ ! -f "$pki/ca.crl.pem" ] || [ -n "$(find "$pki/ca.crl.pem" -mmin +1440)" ]; then
  "$lienthong" keys crl --dir "$pki" >/dev/null
fi

# The broker reads the CA's revocation list where `lienthong keys revoke`
# writes it, through a directory hashed the way Erlang's ssl_crl_hash_dir
# looks CRLs up: a revocation reaches the broker's TLS at once.
mkdir -p "$pki/crl"
ln -sfn ../ca.crl.pem "$pki/crl/ca.crl.pem"
openssl rehash "$pki/crl" >/dev/null
# The broker's copies of its certificate and key, the key readable by the
# rabbitmq user only.
tls=/etc/rabbitmq/tls
as_root mkdir -p "$tls"
as_root rm -rf "$tls/crl"
as_root install -m 0644 "$pki/ca.cert.pem" "$tls/ca.pem"
as_root install -m 0644 "$pki/broker.cert.pem" "$tls/broker.pem"
as_root install -m 0600 -o rabbitmq -g rabbitmq "$pki/broker.key.pem" "$tls/broker.key"

# The management API's operator user: its password made once, kept beside the PKI.
admin_secret="$pki/rabbitmq-admin.password"
if [ ! -s "$admin_secret" ]; then
  (umask 077; openssl rand -hex 24 >"$admin_secret")
fi
admin_password=$(cat "$admin_secret")

conf=$(mktemp)
cat >"$conf" <<CONF
# Written by lienthong's scripts/dev-tls.sh (development machine).
listeners.ssl.default = 5671
auth_mechanisms.1 = EXTERNAL
auth_mechanisms.2 = PLAIN
auth_mechanisms.3 = AMQPLAIN
ssl_cert_login_from = distinguished_name
management.ssl.port = 15671
management.tcp.port = 15672
management.tcp.ip = 127.0.0.1
management.ssl.cacertfile = $tls/ca.pem
management.ssl.certfile = $tls/broker.pem
management.ssl.keyfile = $tls/broker.key
prometheus.tcp.ip = 127.0.0.1
CONF
# ssl_options in advanced.config: the CRL check has no rabbitmq.conf key.
advanced=$(mktemp)
cat >"$advanced" <<ADVANCED
%% Written by lienthong's scripts/dev-tls.sh (development machine).
[{rabbit, [{ssl_options, [{cacertfile, "$tls/ca.pem"},
                          {certfile, "$tls/broker.pem"},
                          {keyfile, "$tls/broker.key"},
                          {verify, verify_peer},
                          {fail_if_no_peer_cert, true},
                          {versions, ['tlsv1.3', 'tlsv1.2']},
                          {crl_check, peer},
                          {crl_cache, {ssl_crl_hash_dir, {internal, [{dir, "$pki/crl"}]}}}]}]}].
ADVANCED
changed=0
as_root mkdir -p /etc/rabbitmq/conf.d
cmp -s "$conf" /etc/rabbitmq/conf.d/50-lienthong-tls.conf || changed=1
cmp -s "$advanced" /etc/rabbitmq/advanced.config || changed=1
enabled=$(cat /etc/rabbitmq/enabled_plugins 2>/dev/null || true)
case "$enabled" in *rabbitmq_auth_mechanism_ssl*) ;; *) changed=1 ;; esac
if [ "$changed" = 1 ]; then
  say "configuring RabbitMQ for TLS (restarts the broker)"
  as_root install -m 0644 "$conf" /etc/rabbitmq/conf.d/50-lienthong-tls.conf
  as_root install -m 0644 "$advanced" /etc/rabbitmq/advanced.config
  as_root rabbitmq-plugins -q --offline enable rabbitmq_management rabbitmq_prometheus \
    rabbitmq_auth_mechanism_ssl >/dev/null
  as_root rabbitmqctl -q stop >/dev/null 2>&1 || true
  as_root rabbitmq-server -detached
  for _ in $(seq 90); do as_root rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
  as_root rabbitmqctl -q await_startup >/dev/null
fi
rm -f "$conf" "$advanced"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 30); do port_open 5671 && port_open 15671 && break; sleep 1; done
if ! as_root rabbitmqctl -q authenticate_user lienthong-admin "$admin_password" >/dev/null 2>&1; then
  as_root rabbitmqctl -q add_user lienthong-admin "$admin_password" >/dev/null 2>&1 \
    || as_root rabbitmqctl -q change_password lienthong-admin "$admin_password" >/dev/null
  as_root rabbitmqctl -q set_user_tags lienthong-admin administrator >/dev/null
  as_root rabbitmqctl -q set_permissions -p / lienthong-admin '.*' '.*' '.*' >/dev/null
fi

# The machine's settings. The exchange's processes log in as guest (allowed
# from loopback only) presenting the exchange's client certificate.
settings=$(mktemp)
cat >"$settings" <<SETTINGS
# Written by lienthong's scripts/dev-tls.sh: this machine's settings, read by
# every lienthong process after its environment (docs/operations.md).
LIENTHONG_AMQP_URL=amqps://localhost:5671/?cafile=$pki/ca.cert.pem&certfile=$pki/lienthong-exchange.cert.pem&keyfile=$pki/lienthong-exchange.key.pem
LIENTHONG_RABBITMQ_API_URL=https://lienthong-admin:$admin_password@localhost:15671
LIENTHONG_RABBITMQ_API_CA=$pki/ca.cert.pem
SETTINGS
if ! cmp -s "$settings" /etc/lienthong/lienthong.env; then
  as_root install -m 0600 -o "$owner" "$settings" /etc/lienthong/lienthong.env
fi
rm -f "$settings"
