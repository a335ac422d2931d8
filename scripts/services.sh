#!/usr/bin/env bash
# Start PostgreSQL, RabbitMQ and Redis on this machine when they do not answer, and wait
# until each does. Safe to run when they are already up: it then changes nothing.
set -uo pipefail

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
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_for PostgreSQL 60 pg_isready -q -h 127.0.0.1 -p 5432 || status=1
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping || status=1
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
  wait_for RabbitMQ 120 rabbitmqctl -q await_startup || status=1
fi
exit $status
