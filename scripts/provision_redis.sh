#!/usr/bin/env bash
# Prints the path of a redis-server (>= 8, with vector sets) on stdout; progress goes to stderr.
#
#   1. REDIS_URL set and not forced:  prints nothing (the caller uses that server).
#   2. a redis-server on PATH that is >= 8 and answers VADD.
#   3. a cached build under ${MEMPROC_CACHE:-~/.cache/memproc}/redis-<version>/.
#   4. otherwise: download the upstream tarball of Debian stable's redis source package with a
#      private apt state (the mirror is the one this machine's apt already uses) and build it.
#
# --binary forces a binary even when REDIS_URL is set (the test suite starts its own servers).
set -euo pipefail

want_binary=0
[ "${1:-}" = "--binary" ] && want_binary=1
# shellcheck source=scripts/provision_lib.sh
. "$(dirname "$0")/provision_lib.sh"

if [ -n "${REDIS_URL:-}" ] && [ $want_binary = 0 ]; then
  log "using REDIS_URL"
  exit 0
fi

# A server answers VADD only if it has vector sets; start it briefly on a free port to ask.
has_vector_sets() {
  local bin=$1 port dir ok=1
  "$bin" --version 2>/dev/null | grep -Eq 'v=([89]|[1-9][0-9])\.' || return 1
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes \
    --pidfile "$dir/pid" --logfile "$dir/log" >/dev/null 2>&1 || { rm -rf "$dir"; return 1; }
  local cli; cli="$(dirname "$bin")/redis-cli"
  for _ in $(seq 50); do
    if python3 - "$port" <<'PY' 2>/dev/null; then ok=0; break; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"*6\r\n$4\r\nVADD\r\n$5\r\nprobe\r\n$6\r\nVALUES\r\n$1\r\n1\r\n$1\r\n1\r\n$1\r\na\r\n")
reply = s.recv(64)
sys.exit(0 if reply.startswith(b":") else 3 if reply.startswith(b"-") else 1)
PY
      rc=$?
      [ $rc = 3 ] && break
      sleep 0.1
    done
  kill "$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$dir"
  return $ok
}

if command -v redis-server >/dev/null 2>&1 && has_vector_sets "$(command -v redis-server)"; then
  command -v redis-server
  exit 0
fi

for bin in "$cache"/redis-*/src/redis-server; do
  if [ -x "$bin" ] && has_vector_sets "$bin"; then
    echo "$bin"
    exit 0
  fi
done

mirror=$(debian_mirror debian)
[ -n "$mirror" ] || { log "no Debian mirror found in this machine's apt configuration"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
private_apt "$work" "deb-src [signed-by=$keyring] $mirror stable main"
log "fetching the Debian stable source index from $mirror"
apt-get "${apt_opts[@]}" -qq update >&2
# The expected checksum of the upstream tarball comes from the signed Sources index.
read -r sha file < <(cd "$work/src" && apt-get "${apt_opts[@]}" -qq source --print-uris redis 2>/dev/null \
  | awk '{ gsub(/\x27/, "", $1); if ($2 ~ /\.orig\.tar\.gz$/) { print $4, $2; exit } }' | sed 's/^SHA256://')
[ -n "${file:-}" ] || { log "redis is not in Debian stable's source index"; exit 1; }
version=$(echo "$file" | sed -E 's/^redis_([^.]+\.[^.]+\.[^.]+)\.orig\.tar\.gz$/\1/')
log "downloading $file (Debian stable, redis $version)"
# For a security revision the .dsc/.debian.tar may be missing from the pool: only the orig
# tarball matters, and it is verified below.
(cd "$work/src" && apt-get "${apt_opts[@]}" -qq source --download-only redis >&2 2>&1) || true
[ -f "$work/src/$file" ] || { log "download of $file failed"; exit 1; }
echo "$sha  $work/src/$file" | sha256sum -c --quiet - >&2 || { log "checksum mismatch for $file"; exit 1; }

dest="$cache/redis-$version"
rm -rf "$dest" "$dest.tmp"
mkdir -p "$dest.tmp"
tar -xzf "$work/src/$file" -C "$dest.tmp" --strip-components=1
log "building redis $version in $dest (about a minute)"
make -C "$dest.tmp" -j"$(nproc)" >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
mv "$dest.tmp" "$dest"
has_vector_sets "$dest/src/redis-server" || { log "built redis-server does not answer VADD"; exit 1; }
log "built $dest/src/redis-server"
echo "$dest/src/redis-server"
