# Sourced by the fetch scripts: apt with a private state directory for one
# Debian suite, leaving the host's apt state alone.
#
#   apt_private DIR SUITE   sets APT_OPTS (for apt-get and apt-cache) to a
#                           sources list of SUITE and an empty dpkg status
#                           under DIR, and runs `apt-get update` there.
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
