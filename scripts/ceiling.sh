# The database's own ceiling for bulk writes (scripts/write-ceiling.sql). Sourced, not run;
# needs scripts/pg.sh's PG_BIN and PG_URL.
#   pg_write_ceiling FILE.jsonl SESSIONS [DELIVERIES]
#     prints the seconds the writes took, then the seconds the reads and writes took;
#     DELIVERIES=false leaves out the delivery records and their reads (backfill makes none)

pg_write_ceiling() {
  local file=$1 sessions=$2 deliveries=${3:-true} url started ended s reads pids=()
  "$PG_BIN/psql" -q "$PG_URL" -c "CREATE DATABASE ceiling" >/dev/null || return 1
  url="${PG_URL%/postgres}/ceiling"
  RUST_LOG=warn target/release/clerk-sync migrate --database-url "$url" >/dev/null || return 1
  "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 "$url" \
    -c "CREATE UNLOGGED TABLE ceiling_raw (line text)" \
    -c "\\copy ceiling_raw FROM pstdin WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')" <"$file" >/dev/null \
    || return 1
  "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 "$url" -f scripts/write-ceiling.sql >/dev/null || return 1
  for reads in false true; do
    started=$(date +%s.%N)
    pids=()
    for s in $(seq 0 $((sessions - 1))); do
      "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 "$url" -c "CALL clerk_sync_ceiling($s, $sessions, $reads, $deliveries)" &
      pids+=($!)
    done
    for s in "${pids[@]}"; do
      wait "$s" || { echo "the ceiling's run failed (reads: $reads)" >&2; return 1; }
    done
    ended=$(date +%s.%N)
    awk -v s="$started" -v e="$ended" 'BEGIN { printf "%.2f\n", e - s }'
    # Empty tables again for the next run (the cascade reaches the application's other tables).
    "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 "$url" -c 'SET client_min_messages = warning' \
      -c 'TRUNCATE "User", clerk_sync.users, clerk_sync.deliveries CASCADE' -c 'CHECKPOINT' >/dev/null \
      || { echo "the ceiling's tables could not be emptied" >&2; return 1; }
  done
  "$PG_BIN/psql" -q "$PG_URL" -c "DROP DATABASE ceiling" >/dev/null
}
