# Sourced by the fetch scripts: apt helpers, for the host's apt state or a
# private one.
#
#   apt_private DIR SUITE   sets APT_OPTS (for apt-get and apt-cache) to a
#                           sources list of SUITE and an empty dpkg status
#                           under DIR, and runs `apt-get update` there: the
#                           host's apt state is not touched.
#   kernel_package [APT_OPTION...]
#                           prints the kernel package linux-image-amd64
#                           depends on.
#   unpack_root CACHE STAMP DEB...
#                           false when CACHE/root was unpacked from the
#                           files STAMP names (CACHE/root.done); otherwise
#                           unpacks the .debs into a new CACHE/root and is
#                           true: the caller finishes the root, then calls
#                           `mark_root CACHE STAMP` (no stamp without a
#                           finished root).
#   fetch_candidate DEST PKG [APT_OPTION...]
#                           puts the candidate .deb of PKG in DEST and prints
#                           its file name (name_version_arch.deb, as apt
#                           names it). A file already there is kept only if
#                           its SHA256 is the archive's: a new version is a
#                           new file, never an old one reused.
apt_private() {
    local dir=$1 suite=$2
    mkdir -p "$dir"/{state/lists/partial,cache/archives/partial}
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" > "$dir/sources.list"
    : > "$dir/status"
    APT_OPTS=(-o Dir::State="$dir/state" -o Dir::State::status="$dir/status"
        -o Dir::Cache="$dir/cache" -o Dir::Etc::SourceList="$dir/sources.list"
        -o Dir::Etc::SourceParts=/dev/null -o Dir::Etc::Preferences=/dev/null
        -o Dir::Etc::PreferencesParts=/dev/null -o APT::Architecture=amd64
        -o APT::Sandbox::User=root)
    apt-get -q "${APT_OPTS[@]}" update >/dev/null
}

kernel_package() {
    local pkg
    pkg=$(apt-cache "$@" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "$0: cannot resolve the kernel package of linux-image-amd64" >&2; return 1; }
    echo "$pkg"
}

fetch_candidate() {
    local dest=$1 pkg=$2 file sum empty
    shift 2
    # apt-get download --print-uris prints nothing for a file already in
    # the current directory: ask from an empty one.
    empty=$(mktemp -d)
    read -r _ file _ sum < <(cd "$empty" && apt-get -q "$@" download --print-uris "$pkg" | head -1) || true
    rmdir "$empty"
    [ -n "${file:-}" ] || { echo "$0: apt knows no candidate for $pkg" >&2; return 1; }
    if [ ! -f "$dest/$file" ] || [ "SHA256:$(sha256sum "$dest/$file" | cut -d' ' -f1)" != "$sum" ]; then
        rm -f "$dest/${pkg}"_*.deb
        (cd "$dest" && apt-get -q "$@" download "$pkg" >/dev/null)
    fi
    echo "$file"
}

unpack_root() {
    local cache=$1 stamp=$2 f
    shift 2
    [ -f "$cache/root.done" ] && [ "$(cat "$cache/root.done")" = "$stamp" ] && return 1
    # Called as an `if` condition, where set -e does not apply: every
    # failure ends the script here.
    rm -rf "$cache/root" "$cache/root.done" && mkdir -p "$cache/root" || exit 1
    for f in "$@"; do
        dpkg -x "$f" "$cache/root" || { echo "$0: cannot unpack $f" >&2; exit 1; }
    done
}

mark_root() {
    echo "$2" > "$1/root.done"
}
