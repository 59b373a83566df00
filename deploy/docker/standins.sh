#!/usr/bin/env bash
# Local stand-ins for the third-party images, for a Docker engine that can pull nothing
# (air-gapped, or behind a proxy that blocks registries). Each is tagged with the name
# compose.yaml and docker/*.Dockerfile use, so nothing else changes:
#
#   debian   RUNTIME_IMAGE     debootstrap --variant=minbase bookworm, slimmed, docker import
#   rust     RUST_IMAGE        that base + gcc, with the host's Rust toolchain copied in
#   redis    REDIS_IMAGE       Debian's redis-server
#   mariadb  MYSQL_IMAGE       Debian's mariadb-server, with an entrypoint that honours the
#                              official image's MYSQL_* variables and init scripts
#   prometheus PROMETHEUS_IMAGE  Debian's prometheus
#   nginx    PROXY_IMAGE       Debian's nginx-light, the proxy in front of the gateways
#
# Jaeger and Grafana have no Debian package and so no stand-in: they are left out of the
# air-gapped stack, which `make up` and `make e2e` start without them.
#
# usage: deploy/docker/standins.sh [--force] [debian|rust|redis|mariadb|prometheus|nginx]...
# With no names, every stand-in. An image that already exists is kept unless --force.
# Needs: docker, debootstrap (apt-get install docker.io debootstrap), a Rust toolchain.
# DEBIAN_MIRROR (default http://deb.debian.org/debian) is used by debootstrap and in the base.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/docker/images.sh

force=0
wanted=()
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    debian | rust | redis | mariadb | prometheus | nginx) wanted+=("$arg") ;;
    *) echo "standins: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(debian rust redis mariadb prometheus nginx)

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=deploy/docker/standins

say() { echo "standins: $*"; }

scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The slim Debian base, made like the official one: minbase, then no docs, man pages or
# locales, and an apt that keeps no package lists or archives.
build_debian() {
  local root
  root=$(mktemp -d /tmp/standin-debian.XXXXXX)
  scratch+=("$root" "$root.log")
  say "debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; return 1; }

  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/* \
    "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
    "$root"/var/log/apt/* "$root"/tmp/*
  tar --numeric-owner -C "$root" -c . |
    docker import --change 'CMD ["bash"]' - "$RUNTIME_IMAGE" >/dev/null
}

# The builder: the same base with a C toolchain (for crates that build C, as aws-lc-sys)
# and the toolchain rustc runs from on this host, laid out like the official rust image.
build_rust() {
  local sysroot context version
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  context=$(mktemp -d /tmp/standin-rust.XXXXXX)
  scratch+=("$context")
  say "rust $version from $sysroot"
  mkdir "$context/toolchain"
  # Hard links where /tmp shares the file system, copies elsewhere; no documentation.
  for part in bin lib libexec etc; do
    [ -e "$sysroot/$part" ] || continue
    cp -al "$sysroot/$part" "$context/toolchain/" 2>/dev/null ||
      cp -a "$sysroot/$part" "$context/toolchain/"
  done
  cp "$here/rust.Dockerfile" "$context/Dockerfile"
  docker build -q --build-arg BASE_IMAGE="$RUNTIME_IMAGE" --build-arg RUST_VERSION="$version" \
    -t "$RUST_IMAGE" "$context" >/dev/null
}

build_from() { # name, tag
  docker build -q --build-arg BASE_IMAGE="$RUNTIME_IMAGE" -f "$here/$1.Dockerfile" \
    -t "$2" "$here" >/dev/null
}

for name in "${wanted[@]}"; do
  case $name in
    debian) tag=$RUNTIME_IMAGE ;;
    rust) tag=$RUST_IMAGE ;;
    redis) tag=$REDIS_IMAGE ;;
    mariadb) tag=$MYSQL_IMAGE ;;
    prometheus) tag=$PROMETHEUS_IMAGE ;;
    nginx) tag=$PROXY_IMAGE ;;
  esac
  if [ $force = 0 ] && exists "$tag"; then
    say "$tag exists, kept"
    continue
  fi
  if [ "$name" != debian ] && ! exists "$RUNTIME_IMAGE"; then
    build_debian
  fi
  started=$SECONDS
  case $name in
    debian) build_debian ;;
    rust) build_rust ;;
    *) build_from "$name" "$tag" ;;
  esac
  say "$tag built in $((SECONDS - started)) s, $(docker image inspect -f '{{.Size}}' "$tag" |
    awk '{printf "%.0f MB", $1 / 1e6}')"
done
