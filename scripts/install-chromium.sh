#!/bin/sh
# Install Debian's headless-capable chromium for the report rendering test.
# Does nothing when /usr/bin/chromium already exists. Needs root (apt-get).
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-chromium.sh: /usr/bin/chromium is missing and installing it needs root" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
