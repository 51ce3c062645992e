#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ run on this Debian machine: starts them
# when they are down, installs them from Debian packages when missing.
set -euo pipefail

# Fast path: both already answer on their ports (whatever installed them).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open 5432 && port_open 5672; then
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL: loopback, user postgres with trust auth for local use only.
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  echo "installing PostgreSQL"
  install postgresql postgresql-client
fi
version=$(ls /etc/postgresql | sort -V | tail -n1)
hba=/etc/postgresql/$version/main/pg_hba.conf
hba_changed=
if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
  # Passwordless loopback access for the local postgres user: for local use only.
  as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  hba_changed=1
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
elif [ -n "$hba_changed" ]; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432

# RabbitMQ: the guest account only connects over loopback.
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  echo "installing RabbitMQ"
  install rabbitmq-server
fi
export PATH="$PATH:/usr/sbin"
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "starting RabbitMQ"
  as_root rabbitmq-server -detached
fi
# The node takes a moment to come up before await_startup can reach it.
for _ in $(seq 60); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
as_root rabbitmqctl -q await_startup --timeout 120
echo "PostgreSQL and RabbitMQ are up"
