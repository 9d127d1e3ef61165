#!/usr/bin/env bash
# Make sure Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer; start them if not.
# They must be installed (Debian/Ubuntu: apt-get install postgresql redis-server, with
# trust authentication for local TCP connections, as the tests connect as postgres
# without a password); this script only starts servers that are installed but stopped.
set -uo pipefail
missing=()
command -v pg_isready >/dev/null 2>&1 || missing+=("PostgreSQL client tools (pg_isready)")
command -v redis-cli >/dev/null 2>&1 || missing+=("Redis (redis-cli)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  echo "the integration tests need PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)" \
       "and Redis on 127.0.0.1:6379; on Debian/Ubuntu: apt-get install postgresql" \
       "redis-server" >&2
  exit 1
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  else
    echo "PostgreSQL does not answer on 127.0.0.1:5432 and no Debian cluster to start" \
         "was found: start your server there (user postgres, trust auth)" >&2
    exit 1
  fi
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  else
    echo "Redis does not answer on 127.0.0.1:6379 and redis-server is not installed" >&2
    exit 1
  fi
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 \
    && exit 0
  sleep 1
done
echo "Postgres or Redis did not come up within 30 s" >&2
exit 1
