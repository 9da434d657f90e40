#!/usr/bin/env bash
# Compile preprocess-core with plain javac and run its JUnit 4 tests against golden samples.
#
#   run-tests.sh GOLDEN_DIR        # GOLDEN_DIR holds golden.json, or sub-folders that each do
#
# Needs a JDK (17+), Gson and JUnit 4 with Hamcrest: on Debian/Ubuntu `apt-get install -y
# default-jdk-headless libgoogle-gson-java junit4` (junit4 pulls in libhamcrest-java). Override
# the jars with GSON_JAR / JUNIT_JAR / HAMCREST_JAR. Set DERMMOBILE_BENCH_OUT=FILE to get a sample benchmark row.
# No Gradle and no Android SDK needed: this is what CI runs (tests/test_android.py).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 GOLDEN_DIR  (a folder written by dermmobile.android.write_golden_samples)" >&2
    exit 2
fi
GOLDEN_DIR=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
GSON_JAR=${GSON_JAR:-/usr/share/java/gson.jar}
JUNIT_JAR=${JUNIT_JAR:-/usr/share/java/junit4.jar}
HAMCREST_JAR=${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}

for tool in javac java; do
    command -v "$tool" >/dev/null || { echo "$tool not found; install a JDK 17+ (apt-get install -y default-jdk-headless)" >&2; exit 3; }
done
for jar in "$GSON_JAR" "$JUNIT_JAR" "$HAMCREST_JAR"; do
    [ -f "$jar" ] || { echo "$jar not found; install Gson and JUnit 4 (apt-get install -y libgoogle-gson-java junit4) or set GSON_JAR/JUNIT_JAR/HAMCREST_JAR" >&2; exit 3; }
done

BUILD=$(mktemp -d "${TMPDIR:-/tmp}/preprocess-core.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
CP="$GSON_JAR:$JUNIT_JAR:$HAMCREST_JAR"

# One javac for main and test sources; C1 only: this is a short-lived compiler run.
javac -J-XX:TieredStopAtLevel=1 --release 17 -Xlint:all -Werror -d "$BUILD/classes" -cp "$CP" \
    $(find "$HERE/src/main/java" "$HERE/src/test/java" -name '*.java')

TESTS=$(cd "$HERE/src/test/java" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
java -Ddermmobile.golden="$GOLDEN_DIR" -Ddermmobile.bench.out="${DERMMOBILE_BENCH_OUT:-}" \
    -cp "$BUILD/classes:$CP" org.junit.runner.JUnitCore $TESTS
