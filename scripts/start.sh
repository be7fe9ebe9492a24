#!/usr/bin/env bash
# Install slidearchive and start it on its embedded defaults (SQLite catalog, embedded index,
# Basic Profile de-identification): DICOMweb on http://127.0.0.1:8080/dicomweb, DIMSE on 11112.
# Extra arguments go to `slidearchive serve` (e.g. --data-dir /srv/slides --host 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e .
exec slidearchive serve "$@"
