#!/usr/bin/env bash
# Fetches the Kafka Connect worker's jars (kafka-harness/connect/pom.xml) and the connector
# plugins (Debezium's PostgreSQL source and JDBC sink, Apicurio's Avro converter) from Maven
# Central into ~/.cache/rail-orders. The kafka-harness crate looks there, and does the same
# fetch itself when they are missing (kafka-harness/src/connect.rs: keep the versions in step).
set -euo pipefail
cd "$(dirname "$0")/.."
kafka=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' kafka-harness/connect/pom.xml)
pg=$(sed -n 's/^pub const DEBEZIUM_POSTGRES_VERSION: &str = "\(.*\)";/\1/p' kafka-harness/src/connect.rs)
jdbc=$(sed -n 's/^pub const DEBEZIUM_JDBC_VERSION: &str = "\(.*\)";/\1/p' kafka-harness/src/connect.rs)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/rail-orders"
mkdir -p "$cache"

# --plugins-only: the plugins, not the worker's jars (an image that has Kafka's own, say).
plugins_only=false
[ "${1:-}" = "--plugins-only" ] && plugins_only=true

jars="$cache/kafka-connect-$kafka/libs"
if $plugins_only; then
  :
elif ls "$jars"/connect-runtime-*.jar >/dev/null 2>&1; then
  echo "connect: Kafka Connect $kafka jars already in $jars"
else
  staging="$jars.partial-$$"
  mvn -B -q -f kafka-harness/connect/pom.xml dependency:copy-dependencies -DoutputDirectory="$staging"
  mkdir -p "$(dirname "$jars")"
  mv "$staging" "$jars"
  echo "connect: Kafka Connect $kafka jars in $jars ($(ls "$jars" | wc -l) files)"
fi

plugins="$cache/connect-plugins-pg$pg-jdbc$jdbc"
if [ -d "$plugins/apicurio-converter" ]; then
  echo "connect: plugins already in $plugins"
else
  staging="$plugins.partial-$$"
  mvn -B -q dependency:unpack "-Dartifact=io.debezium:debezium-connector-postgres:$pg:tar.gz:plugin" -DoutputDirectory="$staging"
  mvn -B -q dependency:unpack "-Dartifact=io.debezium:debezium-connector-jdbc:$jdbc:tar.gz:plugin" -DoutputDirectory="$staging"
  mvn -B -q -f kafka-harness/connect/apicurio-converter/pom.xml dependency:copy-dependencies -DoutputDirectory="$staging/apicurio-converter"
  rm -rf "$staging"/PaxHeaders.*  # tar metadata, not a plugin
  mv "$staging" "$plugins"
  echo "connect: plugins in $plugins: $(ls "$plugins" | tr '\n' ' ')"
fi
