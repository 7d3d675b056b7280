# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
# Sourced by the provisioning scripts: the private cache, logging, and apt with a private state
# pointed at the mirrors this machine's apt already uses (never a hard-coded host).

cache="${MEMPROC_CACHE:-$HOME/.cache/memproc}"
scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "$(basename "$0" .sh): $*" >&2; }

# debian_mirror NAME: the first URI in this machine's apt sources whose path ends in /NAME
# (debian, debian-security), from one-line .list files or deb822 .sources files.
debian_mirror() {
  local name=$1
  {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" || $1 == "deb-src" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) print $i }'
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }'
  } | grep -E "/$name/?\$" | head -n1 || true
}

# private_apt DIR LINE...: an apt state of its own in DIR with the given sources lines (the
# system's lists and sources stay untouched); sets apt_opts for apt-get/apt-cache calls.
private_apt() {
  local dir=$1
  shift
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  printf '%s\n' "$@" > "$dir/sources.list"
  apt_opts=(-o "Dir::State=$dir" -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
    -o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::status=/var/lib/dpkg/status" -o "APT::Sandbox::User=root")
}
