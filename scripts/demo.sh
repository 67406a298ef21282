#!/usr/bin/env bash
# The main job: install what is missing, build and install the extension, start a local cluster
# (project-local data folder .semantic/pgdata, loopback port $SEMANTIC_PORT, default 5499),
# load a demo corpus, embed it and run a semantic search.
#   scripts/demo.sh                      # the project's own 80 movie synopses
#   scripts/demo.sh wiki_movie_plots.csv # a Wikipedia Movie Plots CSV instead
# Re-running is quick and safe: finished steps are skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.semantic"
PGDATA="$STATE/pgdata"
PORT=${SEMANTIC_PORT:-5499}
DB=semantic_demo
CSV=${1:-}
log() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }

if [ -n "$CSV" ]; then
  CSV=$(cd "$(dirname "$CSV")" && pwd)/$(basename "$CSV")
  [ -f "$CSV" ] || { echo "no such file: $CSV" >&2; exit 2; }
fi

"$ROOT/scripts/setup.sh"

if [ ! -f "$PGDATA/PG_VERSION" ]; then
  log "creating the cluster in $PGDATA"
  "$ROOT/scripts/pg.sh" initdb
  cat >> "$PGDATA/postgresql.conf" <<CONF

# semantic demo cluster
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA'
semantic.model_dir = '$STATE/models'
semantic.onnxruntime_library = '$STATE/lib/libonnxruntime.so.1.32.0'
CONF
fi
# Preloaded, the library runs the model server: one copy of each model for all sessions.
if ! grep -q "^shared_preload_libraries = 'semantic'" "$PGDATA/postgresql.conf"; then
  echo "shared_preload_libraries = 'semantic'" >> "$PGDATA/postgresql.conf"
  if "$ROOT/scripts/pg.sh" status >/dev/null 2>&1; then
    log "restarting the cluster to preload the library"
    "$ROOT/scripts/pg.sh" stop >/dev/null
  fi
fi
if ! "$ROOT/scripts/pg.sh" status >/dev/null 2>&1; then
  log "starting the cluster on 127.0.0.1:$PORT"
  "$ROOT/scripts/pg.sh" start
fi

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
if [ "$("${PSQL[@]}" -d postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" = 0 ]; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
fi
"${PSQL[@]}" -d "$DB" <<'SQL'
CREATE EXTENSION IF NOT EXISTS semantic;
-- A database made by an earlier release gets this one's SQL definitions (only then: on a fresh
-- database ALTER EXTENSION ... UPDATE would print a NOTICE that it has nothing to do).
DO $$
BEGIN
  IF (SELECT extversion FROM pg_extension WHERE extname = 'semantic')
     <> (SELECT default_version FROM pg_available_extensions WHERE name = 'semantic') THEN
    ALTER EXTENSION semantic UPDATE;
  END IF;
END
$$;
CREATE TABLE IF NOT EXISTS movies (
  id serial PRIMARY KEY,
  title text NOT NULL,
  year int,
  genre text,
  plot text NOT NULL
);
SQL

if [ "$("${PSQL[@]}" -d "$DB" -Atc "SELECT count(*) FROM movies")" = 0 ]; then
  if [ -z "$CSV" ]; then
    log "loading the built-in demo corpus"
    "${PSQL[@]}" -d "$DB" -c "\\copy movies(title, year, genre, plot) FROM '$ROOT/scripts/demo/movies.csv' WITH (FORMAT csv, HEADER true)"
  else
    log "loading $CSV"
    "${PSQL[@]}" -d "$DB" <<SQL
CREATE TEMP TABLE wiki (release_year int, title text, origin text, director text, "cast" text,
                        genre text, wiki_page text, plot text);
\\copy wiki FROM '$CSV' WITH (FORMAT csv, HEADER true)
INSERT INTO movies(title, year, genre, plot) SELECT title, release_year, genre, plot FROM wiki;
SQL
  fi
fi

if [ "$("${PSQL[@]}" -d "$DB" -Atc "SELECT count(*) FROM pg_indexes WHERE indexname = 'movies_plot_idx'")" = 0 ]; then
  log "indexing the plots (CREATE INDEX ... USING faiss embeds every row)"
  "${PSQL[@]}" -d "$DB" -c "SET semantic.threads = 2" -c "CREATE INDEX movies_plot_idx ON movies USING faiss (plot)"
fi
# An index built by an older release with another page format says so; rebuild it.
if ! "${PSQL[@]}" -d "$DB" -Atc "SELECT generation FROM semantic_index_info('movies_plot_idx')" >/dev/null 2>&1; then
  log "rebuilding the index in this release's format (REINDEX)"
  "${PSQL[@]}" -d "$DB" -c "SET semantic.threads = 2" -c "REINDEX INDEX movies_plot_idx"
fi

if [ "$("${PSQL[@]}" -d "$DB" -Atc "SELECT count(*) FROM pg_indexes WHERE indexname = 'movies_plot_bm25'")" = 0 ]; then
  log "indexing the plots for lexical search (CREATE INDEX ... USING bm25)"
  "${PSQL[@]}" -d "$DB" -c "CREATE INDEX movies_plot_bm25 ON movies USING bm25 (plot)"
fi

for mode in semantic hybrid; do
  log "searching ($mode): romance and separation"
  "${PSQL[@]}" -d "$DB" -P pager=off -v mode="$mode" <<'SQL'
SELECT rank, round(score::numeric, 4) AS score, "row"->>'title' AS title, "row"->>'year' AS year
FROM semantic_search('romance and separation', 5, mode => :'mode');
SQL
done

echo
echo "Connect with:  psql -h 127.0.0.1 -p $PORT -U postgres -d $DB"
echo "Stop with:     $ROOT/scripts/pg.sh stop"
