#!/usr/bin/env bash
# Fetches Apicurio Registry (the ready application from Maven Central) into $APICURIO_DIR, or
# ~/.cache/rail-orders/apicurio-registry-<version>, and checks that a Java 21 or newer is there
# to run it. The kafka-harness crate looks there, and does the same fetch itself when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^pub const APICURIO_VERSION: &str = "\(.*\)";/\1/p' kafka-harness/src/registry.rs)
dir="${APICURIO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rail-orders/apicurio-registry-$version}"
if [ -z "${APICURIO_JAVA:-}" ]; then
  java21=""
  for home in /usr/lib/jvm/*/; do
    major=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$home/release" 2>/dev/null || true)
    if [ -n "$major" ] && [ "$major" -ge 21 ] && [ -x "$home/bin/java" ]; then java21="$home/bin/java"; fi
  done
  if [ -z "$java21" ]; then
    echo "apicurio: no Java 21 or newer under /usr/lib/jvm (Apicurio Registry $version needs one);" \
         "install one (e.g. Temurin 21 or 25) or set APICURIO_JAVA" >&2
    exit 1
  fi
  echo "apicurio: Java for the registry: $java21"
fi
if [ -f "$dir/quarkus-run.jar" ]; then
  echo "apicurio: Apicurio Registry $version already in $dir"
  exit 0
fi
mkdir -p "$(dirname "$dir")"
staging="$dir.partial-$$"
mvn -B -q dependency:unpack "-Dartifact=io.apicurio:apicurio-registry-app:$version:tar.gz:all" "-DoutputDirectory=$staging"
mv "$staging" "$dir"
echo "apicurio: Apicurio Registry $version in $dir"
