#!/usr/bin/env bash
# The GitHub Action's first step (action.yml): puts `kiln` on the job's PATH — downloaded
# from KILN_ACTION_KILN_URL (a binary or a .tar.gz holding one), or built with cargo from
# the Kiln checkout at KILN_ACTION_SOURCE_PATH, or the `kiln` already on PATH.
set -euo pipefail

bin_dir="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/kiln-action-bin"
mkdir -p "$bin_dir"

if [ -n "${KILN_ACTION_KILN_URL:-}" ]; then
  echo "kiln: downloading $KILN_ACTION_KILN_URL"
  download="$bin_dir/download"
  curl --fail --silent --show-error --location --retry 3 --output "$download" "$KILN_ACTION_KILN_URL"
  case "$KILN_ACTION_KILN_URL" in
    *.tar.gz | *.tgz)
      unpacked="$bin_dir/unpacked"
      rm -rf "$unpacked" && mkdir -p "$unpacked"
      tar -xzf "$download" -C "$unpacked"
      found="$(find "$unpacked" -type f -name kiln | head -n 1)"
      if [ -z "$found" ]; then
        echo "kiln: $KILN_ACTION_KILN_URL holds no file named kiln" >&2
        exit 1
      fi
      mv "$found" "$bin_dir/kiln"
      rm -rf "$unpacked" "$download"
      ;;
    *) mv "$download" "$bin_dir/kiln" ;;
  esac
  chmod +x "$bin_dir/kiln"
elif [ -n "${KILN_ACTION_SOURCE_PATH:-}" ]; then
  profile="${KILN_ACTION_CARGO_PROFILE:-release}"
  case "$profile" in
    dev | test) profile_dir=debug ;;
    *) profile_dir="$profile" ;;
  esac
  echo "kiln: building kiln from $KILN_ACTION_SOURCE_PATH (cargo profile $profile)"
  (cd "$KILN_ACTION_SOURCE_PATH" && cargo build --locked -p kiln-cli --profile "$profile")
  target_dir="${CARGO_TARGET_DIR:-$KILN_ACTION_SOURCE_PATH/target}"
  cp "$target_dir/$profile_dir/kiln" "$bin_dir/kiln"
elif command -v kiln >/dev/null 2>&1; then
  echo "kiln: using $(command -v kiln)"
  ln -sf "$(command -v kiln)" "$bin_dir/kiln"
else
  echo "kiln: no kiln to install; give the action kiln-url (a release binary) or source-path (a Kiln checkout)" >&2
  exit 1
fi

"$bin_dir/kiln" --version
echo "$bin_dir" >> "${GITHUB_PATH:?GITHUB_PATH is not set: this script runs as a GitHub Actions step}"
