#!/usr/bin/env bash
# Make sure headless Chromium is there for tests/test_browser.py (sweep.html rendered in a real
# browser). Order: already installed -> Debian package `chromium` via apt -> a message; the
# test then fails where MODELZIP_REQUIRE_BROWSER=1 (make test) and skips elsewhere.
set -uo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then echo "browser: $name found"; exit 0; fi
done
if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    echo "browser: installing the Debian package chromium (headless checks of the HTML reports)"
    $sudo apt-get update -qq >/dev/null 2>&1
    if $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
      echo "browser: chromium installed"; exit 0
    fi
  fi
fi
echo "browser: chromium is not available (apt-get install chromium); the browser check will say so" >&2
exit 0
