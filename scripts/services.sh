#!/usr/bin/env bash
# Start PostgreSQL, RabbitMQ and Redis on this machine when they do not answer, and wait
# until each does. Safe to run when they are already up: it then changes nothing.
set -uo pipefail
# --optional: skip a service whose server is not installed here (kc-tasks dev stands in).
optional=false
[ "${1:-}" = "--optional" ] && optional=true

installed() {  # name, command
  command -v "$2" >/dev/null 2>&1 && return 0
  if $optional; then echo "services: $1 is not installed here; kc-tasks dev will stand in for it"; return 1; fi
  echo "services: $1 is not installed ($2 not found)" >&2
  status=1
  return 1
}

wait_for() {  # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "services: $name did not come up in ${seconds}s" >&2
  return 1
}

status=0
if installed PostgreSQL pg_ctlcluster && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_for PostgreSQL 60 pg_isready -q -h 127.0.0.1 -p 5432 || status=1
fi
if installed Redis redis-server && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping || status=1
fi
if installed RabbitMQ rabbitmq-server && ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
  wait_for RabbitMQ 120 rabbitmqctl -q await_startup || status=1
fi
$optional && exit 0
exit $status
