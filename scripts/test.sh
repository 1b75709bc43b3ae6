#!/usr/bin/env bash
# The whole test suite: installs build dependencies, builds, runs every test target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
swift build --build-tests
swift test --skip-build
