#!/usr/bin/env bash
# Make this machine ready to run lienthong: system packages, running services,
# a virtual environment with the project installed. Safe to run again: each
# step does nothing when its work is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the broker, the database, and xmlsec1 (the interoperability
# tests verify our signatures with the XML Security Library's own tool).
missing=()
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v xmlsec1 >/dev/null 2>&1 || missing+=(xmlsec1)
# The national axis SDK (../shared/clients/vxp) for the gateway's java tests:
# its dependencies from Debian, found in /usr/share/java by the tests.
for jar in httpclient:libhttpclient-java httpcore:libhttpcore-java httpmime:libhttpmime-java \
           gson:libgoogle-gson-java commons-codec:libcommons-codec-java guava:libguava-java \
           commons-logging:libcommons-logging-java; do
  [ -f "/usr/share/java/${jar%%:*}.jar" ] || missing+=("${jar#*:}")
done
command -v curl >/dev/null 2>&1 || missing+=(curl)
# openssl: the tests make a SHA-1-signed certificate, which `cryptography` refuses to.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Prometheus (server and promtool): the alert rule tests and the real scrape
# test run their own server on a free port; the package's service is unused.
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# Alertmanager and amtool: the inhibition tests run the real thing on a free port.
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
# Java and the jars the official edXML library needs: the interoperability
# tests (tests/interop/test_edxml102.py) build and parse packages with it
# from ../shared/clients/edxml102/.
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -f /usr/share/java/jdom2.jar ] || missing+=(libjdom2-java)
[ -f /usr/share/java/guava.jar ] || missing+=(libguava-java)
[ -f /usr/share/java/commons-codec.jar ] || missing+=(libcommons-codec-java)
{ [ -f /usr/share/java/slf4j-api.jar ] && [ -f /usr/share/java/slf4j-nop.jar ]; } \
  || missing+=(libslf4j-java)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# RabbitMQ: start it when it is not answering.
if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached
  for _ in $(seq 60); do as_root rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
fi
as_root rabbitmqctl -q await_startup >/dev/null

# RabbitMQ plugins: the management HTTP API (provisioning agency users, the
# audit) and Prometheus metrics. Enabling starts an Erlang VM (seconds), so
# only when their ports (15672, 15692) do not answer yet.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 15672 || ! port_open 15692; then
  say "enabling the RabbitMQ management and Prometheus plugins"
  as_root rabbitmq-plugins -q enable rabbitmq_management rabbitmq_prometheus >/dev/null
  for _ in $(seq 30); do port_open 15672 && port_open 15692 && break; sleep 1; done
fi

# The consistent-hash exchange (ships with RabbitMQ) spreads submitted
# messages over the work lanes by sender; enabled online, no restart.
case "$(cat /etc/rabbitmq/enabled_plugins 2>/dev/null || true)" in
  *rabbitmq_consistent_hash_exchange*) ;;
  *)
    say "enabling the RabbitMQ consistent-hash exchange"
    as_root rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null
    ;;
esac

# PostgreSQL: start the cluster when it is not accepting connections.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  say "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# The virtual environment with the project and its test tools.
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment (.venv)"
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c 'import exchange, pytest, hypothesis' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  say "installing lienthong into .venv"
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip \
         && .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
    cat "$log"; exit 1
  fi
  rm -f "$log"
  touch .venv/.installed
fi

# TLS: the development PKI, RabbitMQ's TLS listener and certificate logins,
# the management API over HTTPS, and this machine's settings file.
bash scripts/dev-tls.sh
