#!/usr/bin/env bash
# Make sure Debian's Chromium is there for the browser tests (tests/browser, Playwright).
# Idempotent: does nothing when it is installed. Never downloads a browser build of its own
# (no `playwright install`): the tests drive this Chromium through executable_path.
#
#   CHROMIUM_PATH   where the tests look for it (default /usr/bin/chromium)
set -euo pipefail

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo present) at $CHROMIUM"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "FAIL: $CHROMIUM is missing; as root: apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "FAIL: $CHROMIUM is missing and there is no apt-get: install Chromium, set CHROMIUM_PATH" >&2
    exit 1
fi
echo "installing Debian's chromium (for the browser tests)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
if [ ! -x "$CHROMIUM" ]; then
    echo "FAIL: chromium was installed but $CHROMIUM is not there (set CHROMIUM_PATH)" >&2
    exit 1
fi
echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo installed) at $CHROMIUM"
