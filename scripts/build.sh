#!/usr/bin/env bash
# Builds the Cog image with the cog and coglet that the tests run (arguments go to `cog build`, e.g. -t musicgen).
# cog.yaml's sdk_version pins cog; coglet, the server inside the image, has no cog.yaml key: `cog build` pins
# it only from COGLET_WHEEL in its environment, set here from requirements.txt's pin.
set -euo pipefail
cd "$(dirname "$0")/.."
coglet=$(sed -n 's/^coglet==\([^ ]*\).*/\1/p' requirements.txt)
if [ -z "$coglet" ]; then
  echo "build: requirements.txt pins no coglet (coglet==X.Y.Z)" >&2
  exit 2
fi
COGLET_WHEEL="pypi:$coglet" exec cog build "$@"
