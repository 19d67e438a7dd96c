#!/usr/bin/env bash
# The GitHub Action's second step (action.yml): runs the stages and the command under
# `kiln run`, which reads GitHub's variables (GITHUB_REPOSITORY, GITHUB_SHA, GITHUB_REF_NAME,
# GITHUB_RUN_ID, …) for the build's metadata, and exits with the command's exit code.
set -euo pipefail

if [ -n "${KILN_ACTION_SERVER_URL:-}" ]; then export KILN_URL="$KILN_ACTION_SERVER_URL"; fi
if [ -n "${KILN_ACTION_TOKEN:-}" ]; then export KILN_TOKEN="$KILN_ACTION_TOKEN"; fi
if [ -z "${KILN_TOKEN:-}" ] && [ -z "${OM_BUILD_EVENT_TOKEN:-}" ]; then
  echo "::warning::kiln: no token (the action's token input or KILN_TOKEN); the build runs but is not reported"
fi

run_id="${KILN_ACTION_RUN_ID:-}"
if [ -z "$run_id" ]; then
  if [ -r /proc/sys/kernel/random/uuid ]; then
    run_id="$(cat /proc/sys/kernel/random/uuid)"
  elif command -v uuidgen >/dev/null 2>&1; then
    run_id="$(uuidgen | tr '[:upper:]' '[:lower:]')"
  else
    run_id="gha-${GITHUB_RUN_ID:-0}-${GITHUB_RUN_ATTEMPT:-1}-${GITHUB_JOB:-job}-$$"
  fi
fi
if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "run-id=$run_id" >> "$GITHUB_OUTPUT"; fi

args=(run --run-id "$run_id" --flush-timeout "${KILN_ACTION_FLUSH_TIMEOUT:-5}")
if [ -n "${KILN_ACTION_ENV:-}" ]; then args+=(--env "$KILN_ACTION_ENV"); fi
while IFS= read -r stage; do
  if [ -n "${stage//[[:space:]]/}" ]; then args+=(--stage "$stage"); fi
done <<< "${KILN_ACTION_STAGES:-}"
args+=(-- bash -eo pipefail -c "${KILN_ACTION_COMMAND:?the command input is required}")

echo "kiln: build $run_id"
exec kiln "${args[@]}"
