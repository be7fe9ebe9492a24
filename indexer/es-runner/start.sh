#!/usr/bin/env bash
# Starts a single-node Elasticsearch 8 on 127.0.0.1 for tests/benchmarks and prints its URL.
# Needs: `mvn -q -f indexer/es-runner/pom.xml dependency:copy-dependencies` run once before.
# Usage: start.sh [HOME_DIR] [HTTP_PORT]   (env ES_HEAP, default 1g; env ES_PARENT_PID: the node
# exits when that process is gone, so a killed test run leaves no node behind)
# The node runs in the background; its pid is written to HOME_DIR/node.pid and its
# log to HOME_DIR/node.log. Stop it with: kill "$(cat HOME_DIR/node.pid)"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${1:-$here/es-home}"
port="${2:-9250}"
tport=$((port + 100))
heap="${ES_HEAP:-1g}"

if [ ! -d "$here/target/dependency" ]; then
  echo "missing $here/target/dependency: run mvn -q -f $here/pom.xml dependency:copy-dependencies" >&2
  exit 2
fi
# compile the three runner classes once (javac is part of the JDK; no maven compile step needed)
if [ ! -f "$here/target/classes/slidearchive/EsNode.class" ] || \
   [ -n "$(find "$here/src" -name '*.java' -newer "$here/target/classes/slidearchive/EsNode.class")" ]; then
  mkdir -p "$here/target/classes"
  javac -nowarn -d "$here/target/classes" -cp "$here/target/dependency/*" $(find "$here/src" -name '*.java')
fi

mkdir -p "$home"
java -Xms256m -Xmx"$heap" -XX:+UseSerialGC -Djava.awt.headless=true \
  -cp "$here/target/classes:$here/target/dependency/*" slidearchive.EsNode \
  --home "$home" --http-port "$port" --transport-port "$tport" >"$home/node.log" 2>&1 &
echo $! >"$home/node.pid"

url="http://127.0.0.1:$port"
for _ in $(seq 1 180); do
  if ! kill -0 "$(cat "$home/node.pid")" 2>/dev/null; then
    echo "elasticsearch exited; last log lines:" >&2
    tail -30 "$home/node.log" >&2
    exit 1
  fi
  if curl -fsS "$url/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then
    echo "$url"
    exit 0
  fi
  sleep 1
done
echo "elasticsearch did not become healthy in 180 s; see $home/node.log" >&2
exit 1
