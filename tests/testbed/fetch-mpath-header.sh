#!/usr/bin/env bash
# Puts the mpath_persist.h matching the installed libmpathpersist (Debian's
# multipath-tools source package) at $PRH_TEST_CACHE/mpath/mpath_persist.h,
# for the FFI layout test. Debian ships no -dev package with the header.
set -euo pipefail
CACHE=${PRH_TEST_CACHE:-/var/cache/pr-helper}/mpath
mkdir -p "$CACHE"
cd "$CACHE"
version=$(dpkg-query -W -f='${Version}' multipath-tools 2>/dev/null || true)
[ -n "$version" ] || { echo "multipath-tools is not installed" >&2; exit 1; }
if [ -f mpath_persist.h ] && [ "$(cat version 2>/dev/null)" = "$version" ]; then
    exit 0
fi
if ! grep -rqs 'deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/pr-helper-src.sources <<'EOS'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    apt-get update -q
fi
rm -rf src && mkdir src && cd src
apt-get source --download-only "multipath-tools=$version"
tar -xzf multipath-tools_*.orig.tar.gz --wildcards '*/libmpathpersist/mpath_persist.h'
cp */libmpathpersist/mpath_persist.h ../mpath_persist.h
cd .. && rm -rf src
echo "$version" > version
echo "mpath_persist.h for multipath-tools $version in $CACHE"
