#!/usr/bin/env bash
# Fetches the Apache Kafka broker and tool jars (with a log4j2 implementation) from Maven Central
# into $KAFKA_JARS_DIR, or ~/.cache/rail-orders/kafka-<version>/libs. The kafka-harness crate
# looks there, and does the same fetch itself when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
pom=kafka-harness/kafka/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
dir="${KAFKA_JARS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rail-orders/kafka-$version/libs}"
if ls "$dir"/kafka_2.13-*.jar >/dev/null 2>&1; then
  echo "kafka-jars: Kafka $version jars already in $dir"
  exit 0
fi
mkdir -p "$(dirname "$dir")"
staging="$dir.partial-$$"
mvn -B -q -f "$pom" dependency:copy-dependencies -DoutputDirectory="$staging"
mv "$staging" "$dir"
echo "kafka-jars: Kafka $version jars in $dir ($(ls "$dir" | wc -l) files)"
