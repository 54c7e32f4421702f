#!/usr/bin/env bash
# The one test command (README "Quick start"): installs what the tests need when it
# is missing (redis-server, Chromium, node, the Python packages), then runs every
# test: the Rust workspace with failpoints compiled in, the TypeScript and Python
# worker packages against a real `dagflow serve`, one flow across Rust, TypeScript
# and Python (tests/polyglot), and Schemathesis against the
# published OpenAPI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing $*; install them (as root: apt-get install $*)" >&2
    exit 1
  fi
  echo "installing $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The dashboard's browser test drives Debian's headless Chromium with playwright-core.
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
fi
redis-server --version

# Two cores: keep the build and the tests from fighting over them.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export RUST_BACKTRACE=1

# 1. The Rust workspace. `failpoints` compiles the engine's fault injection in
#    (actors/tests/delivery.rs and tests/chaos.rs drive it); release builds leave
#    it out.
cargo test --workspace --features failpoints

export DAGFLOW_BIN="$root/target/debug/dagflow"

# 2. The TypeScript worker package (node's test runner), against a real server.
(cd workers/node && npm ci --no-audit --no-fund --loglevel=error && npm run build && npm test)

# 3. The Python worker package (pytest), against a real server. In a virtualenv of
#    its own under target/ (a system Python may refuse `pip install`, PEP 668); the
#    polyglot test and Schemathesis use the same interpreter (PATH, PYTHON).
venv="$root/target/test-venv"
if ! "$venv/bin/python3" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
fi
export PATH="$venv/bin:$PATH"
export PYTHON="$venv/bin/python3"
python3 -m pip install -q --disable-pip-version-check -r workers/python/requirements-test.txt
python3 -m pip install -q --disable-pip-version-check -e workers/python
python3 -m pytest -q workers/python/tests

# 4. One flow across Rust, TypeScript and Python against a real server and Redis
#    (tests/polyglot): uses the node package built in 2 and the Python package
#    installed in 3, and fails (never skips) if either is missing.
node --test tests/polyglot/

# 5. The API against its published OpenAPI, with generated requests.
bash scripts/schemathesis.sh
