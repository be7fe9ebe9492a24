#!/usr/bin/env bash
# Install slidearchive and start it on its embedded defaults (SQLite catalog, embedded index,
# Basic Profile de-identification): DICOMweb on http://127.0.0.1:8080/dicomweb, DIMSE on 11112.
# Extra arguments go to `slidearchive serve` (e.g. --data-dir /srv/slides --host 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p | grep -q libturbojpeg.so.0; then  # opentile's lossless tile copy (vendor import)
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libturbojpeg0 >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -e .
exec slidearchive serve "$@"
