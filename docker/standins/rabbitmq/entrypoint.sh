#!/bin/sh
# The stand-in rabbitmq:3-management's entry point (see Containerfile).
set -eu
[ "$#" -gt 0 ] || set -- rabbitmq-server
if [ "$1" != rabbitmq-server ]; then
  exec "$@"
fi
# The official image's settings: logs to the console, every user may log in from any host.
{
  echo "loopback_users = none"
  echo "log.console = true"
  echo "log.file = false"
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
    echo "default_user = $RABBITMQ_DEFAULT_USER"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:?set RABBITMQ_DEFAULT_PASS with RABBITMQ_DEFAULT_USER}"
  fi
} >/etc/rabbitmq/conf.d/10-docker.conf
chown rabbitmq:rabbitmq /etc/rabbitmq/conf.d/10-docker.conf
chmod 600 /etc/rabbitmq/conf.d/10-docker.conf
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
shift
export HOME=/var/lib/rabbitmq
cd /var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
