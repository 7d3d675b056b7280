#!/usr/bin/env bash
# Prints the path of a redis-server (>= 8, with vector sets) on stdout; progress goes to stderr.
#
#   1. REDIS_URL (or REDIS_HOST / REDIS_PORT / REDIS_DB) set and not forced: prints nothing (the
#      caller uses that server).
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

if [ -n "${REDIS_URL:-}${REDIS_HOST:-}${REDIS_PORT:-}${REDIS_DB:-}" ] && [ $want_binary = 0 ]; then
  log "using the Redis of REDIS_URL / REDIS_HOST / REDIS_PORT / REDIS_DB"
  exit 0
fi

# A server answers VADD only if it has vector sets; start it briefly on a free port to ask.
has_vector_sets() {
  "$1" --version 2>/dev/null | grep -Eq 'v=([89]|[1-9][0-9])\.' || return 1
  python3 "$scripts_dir/server_probe.py" "$1" 'VADD probe VALUES 1 1 a' >/dev/null 2>&1
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
