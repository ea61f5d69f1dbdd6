#!/usr/bin/env bash
# Back up the system-docs DB while services keep writing to it.
#   platform/ops/backup-docsdb.sh [DB_URL] [OUT_DIR]
# SQLite: `VACUUM INTO` makes a consistent copy of a WAL database without stopping writers.
# Postgres: pg_dump in custom format.
set -euo pipefail
db="${1:-${HOMELAB_DB:-sqlite://./var/system-docs.db}}"
out="${2:-./var/backups}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
case "$db" in
  sqlite://*)
    path="${db#sqlite://}"; path="${path%%\?*}"
    command -v sqlite3 >/dev/null || { echo "sqlite3 is needed (apt-get install sqlite3)" >&2; exit 1; }
    sqlite3 "$path" "VACUUM INTO '$out/system-docs-$stamp.db'"
    echo "$out/system-docs-$stamp.db" ;;
  postgres://*|postgresql://*)
    pg_dump --format=custom --file="$out/system-docs-$stamp.pgdump" "$db"
    echo "$out/system-docs-$stamp.pgdump" ;;
  *) echo "unsupported DB URL: $db" >&2; exit 1 ;;
esac
