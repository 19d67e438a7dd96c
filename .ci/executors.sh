#!/usr/bin/env bash
# Prepares what the executor tests of kiln-agent need: bubblewrap (sandbox executor) and
# Podman's Docker-compatible API on a unix socket with a busybox image (container
# executor). Idempotent: installs only what is missing, imports the image only when
# absent, starts the service only when the socket does not answer. Prints the export
# lines for the tests (progress goes to stderr).
# Usage: eval "$(bash .ci/executors.sh)"
set -euo pipefail
socket=${KILN_PODMAN_SOCKET:-/tmp/kiln-podman.sock}
image=localhost/busybox:kiln
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v podman >/dev/null || missing+=(podman)
[ -x /usr/sbin/runc ] || missing+=(runc)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >&2
fi

# Without this file the kernel of these machines refuses containers with
# "setrlimit RLIMIT_NOFILE" or "cgroups in hybrid mode" (../shared/RECIPES.md).
conf=/etc/containers/containers.conf
wanted_conf='[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
[engine.runtimes]
runc = ["/usr/sbin/runc"]'
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted_conf" ]; then
  mkdir -p /etc/containers
  printf '%s\n' "$wanted_conf" > "$conf"
fi

# A root file system holding only a static busybox with every applet linked.
if ! podman image exists "$image" 2>/dev/null; then
  rootfs=$(mktemp -d /tmp/kiln-busybox.XXXXXX)
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  tar -C "$rootfs" -cf "$rootfs.tar" .
  podman import --quiet "$rootfs.tar" "$image" >&2
  rm -rf "$rootfs" "$rootfs.tar"
fi

answers() { curl -sf --max-time 2 --unix-socket "$socket" http://d/v1.41/version >/dev/null 2>&1; }
if ! answers; then
  rm -f "$socket"
  log=/tmp/kiln-podman-service.log
  echo "starting podman system service on $socket (log: $log)" >&2
  setsid nohup podman system service --time=0 "unix://$socket" >"$log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    answers && break
    sleep 0.1
  done
  answers || { echo "podman service did not answer on $socket; see $log" >&2; exit 1; }
fi

echo "export KILN_TEST_DOCKER_SOCKET=$socket KILN_TEST_DOCKER_IMAGE=$image KILN_REQUIRE_EXECUTORS=1"
