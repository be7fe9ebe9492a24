#!/usr/bin/env bash
# Install slidearchive and start it on its embedded defaults (SQLite catalog, embedded index,
# Basic Profile de-identification): DICOMweb on http://127.0.0.1:8080/dicomweb, DIMSE on 11112.
# Extra arguments go to `slidearchive serve` (e.g. --data-dir /srv/slides --host 0.0.0.0).
# Installs only what is missing (scripts/installed.py), so a second start starts at once.
# Runs this checkout's code; relative paths (the default ./slidearchive-data) are relative to
# the directory you start it from. Stop it with Ctrl-C (or SIGTERM).
set -euo pipefail
REPO="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
if ! ldconfig -p | grep -q libturbojpeg.so.0; then  # opentile's lossless tile copy (vendor import)
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libturbojpeg0 >/dev/null
fi
# The web app's browser libraries (dicom-microscopy-viewer, dicomweb-client), pinned in package-lock.json
if command -v npm >/dev/null && { [ ! -d "$REPO/node_modules/dicom-microscopy-viewer" ] \
    || [ "$REPO/package-lock.json" -nt "$REPO/node_modules/.package-lock.json" ]; }; then
  (cd "$REPO" && npm ci --no-audit --no-fund --loglevel=error)
fi
if ! python3 "$REPO/scripts/installed.py"; then
  python3 -m pip install --quiet --disable-pip-version-check -e "$REPO"
fi
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m archive.cli serve "$@"
