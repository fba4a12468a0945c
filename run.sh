#!/usr/bin/env sh
# The README's two commands: `./run.sh demo` and `./run.sh test`.
# Each sets up a virtual environment in .venv (Python 3.11+ and a C compiler: one module is compiled) and runs.
set -eu
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[pipeline,embedded,test]'
case "${1:-}" in
    demo)
        shift
        exec .venv/bin/meterline demo --duplicates 0.02 --out-of-order 0.05 --late 0.01 --malformed 0.01 "$@"
        ;;
    test)
        shift
        # The dashboard is tested in a real browser: Debian's chromium (no browser download).
        if ! command -v chromium >/dev/null 2>&1; then
            echo "installing Debian's chromium for the dashboard's browser test" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        fi
        export METERLINE_REQUIRE_BROWSER=1   # a missing browser fails the test instead of skipping it
        # Stripe's request validator (tests/support/stripe_mock.py), built with Go where Go is;
        # then required, so that a failed install fails its test instead of skipping it.
        if command -v go >/dev/null 2>&1; then
            if [ ! -x .venv/bin/stripe-mock ]; then
                echo "installing stripe-mock v0.197.0 (Stripe's request validator) with Go" >&2
                GOBIN="$PWD/.venv/bin" go install github.com/stripe/stripe-mock@v0.197.0
            fi
            export METERLINE_REQUIRE_STRIPE_MOCK=1
        fi
        # Apache Kafka 4.x (KRaft) for the crash lane and the stream's integration tests
        # (tests/support/apache_kafka.py): its jars from Maven Central, once; then required.
        if command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then
            version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' tests/support/kafka-jars/pom.xml)
            jars="$PWD/.venv/apache-kafka-$version"
            if [ ! -f "$jars/kafka_2.13-$version.jar" ]; then
                echo "copying Apache Kafka $version's jars from Maven Central into $jars" >&2
                mvn -q -B -f tests/support/kafka-jars/pom.xml dependency:copy-dependencies \
                    -DincludeScope=runtime -DoutputDirectory="$jars"
            fi
            export METERLINE_REQUIRE_APACHE_KAFKA=1
        fi
        .venv/bin/ruff check .
        .venv/bin/mypy
        # One test module per worker, each with its own broker (module fixtures stay whole).
        exec .venv/bin/pytest -n "${METERLINE_TEST_WORKERS:-2}" --dist loadscope "$@"
        ;;
    *)
        echo "usage: ./run.sh demo|test [args]" >&2
        exit 2
        ;;
esac
