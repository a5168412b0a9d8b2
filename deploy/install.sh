#!/bin/sh
# Installs Tern as a system service: the binaries into /usr/local/bin, a dedicated user, the
# systemd unit, and then either initializes the control plane or enrolls the agent.
#
#   deploy/install.sh control-plane [--from DIR] [--server-name NAME]...
#   deploy/install.sh agent --control-plane HOST:PORT [--token TOKEN] [--name NAME]
#                           [--labels k=v,...] [--trust-root FILE] [--from DIR]
#
# The agent's one-time token comes from --token or the TERN_TOKEN variable (prefer the
# variable: arguments show in `ps`). --from is where the built binaries are (default: beside
# this script's directory, in target/release). With DESTDIR set, files are laid out under it
# and no user is created, nothing enrolls and systemctl is not run (packaging, tests).
set -eu

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 1 ] || usage
role=$1
shift
case "$role" in
    agent) service=tern-agent user=tern-agent binary=tern-agent ;;
    control-plane) service=tern-control-plane user=tern binary=tern-control-plane ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown role '$role' (agent or control-plane)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
from="$here/../target/release"
control_plane= name=$(hostname) labels= trust_root= server_names=
token=${TERN_TOKEN:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=$2; shift 2 ;;
        --control-plane) control_plane=$2; shift 2 ;;
        --token) token=$2; shift 2 ;;
        --name) name=$2; shift 2 ;;
        --labels) labels=$2; shift 2 ;;
        --trust-root) trust_root=$2; shift 2 ;;
        --server-name) server_names="$server_names --server-name $2"; shift 2 ;;
        -h | --help) usage ;;
        *) echo "install.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done

root=${DESTDIR:-}
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or set DESTDIR to lay the files out elsewhere)" >&2
    exit 1
fi
if [ "$role" = agent ] && [ -z "$root" ]; then
    [ -n "$control_plane" ] || { echo "install.sh: agent needs --control-plane HOST:PORT" >&2; exit 2; }
    [ -n "$token" ] || { echo "install.sh: agent needs a token (--token or TERN_TOKEN)" >&2; exit 2; }
fi
[ -x "$from/$binary" ] || { echo "install.sh: $from/$binary not found (build with cargo build --release --locked -p tern-control-plane -p ternctl -p tern-agent, or pass --from DIR)" >&2; exit 1; }

echo "==> binaries into $root/usr/local/bin"
install -d "$root/usr/local/bin"
install -m 0755 "$from/$binary" "$root/usr/local/bin/$binary"
if [ -x "$from/ternctl" ]; then
    install -m 0755 "$from/ternctl" "$root/usr/local/bin/ternctl"
fi
echo "==> unit $service.service into $root/etc/systemd/system"
install -d "$root/etc/systemd/system"
install -m 0644 "$here/systemd/$service.service" "$root/etc/systemd/system/$service.service"
install -d -m 0700 "$root/var/lib/$service"

if [ -n "$root" ]; then
    echo "==> DESTDIR set: no user, no enrollment, no systemctl"
    exit 0
fi

if ! id "$user" >/dev/null 2>&1; then
    echo "==> system user $user"
    useradd --system --home-dir "/var/lib/$service" --no-create-home --shell /usr/sbin/nologin "$user"
fi
for group in video render; do
    if [ "$role" = agent ] && getent group "$group" >/dev/null; then
        usermod -a -G "$group" "$user"
    fi
done
chown "$user:$user" "/var/lib/$service"

if [ "$role" = control-plane ]; then
    if [ ! -e "/var/lib/$service/config.toml" ]; then
        echo "==> tern-control-plane init"
        # shellcheck disable=SC2086 # one word per --server-name NAME
        runuser -u "$user" -- /usr/local/bin/tern-control-plane init --data-dir "/var/lib/$service" $server_names
        echo "    ternctl's config: /var/lib/$service/ternctl.toml (copy it to ~/.config/tern/)"
    fi
else
    if [ ! -e "/var/lib/$service/agent.toml" ]; then
        echo "==> tern-agent join ($name)"
        set -- --control-plane "$control_plane" --data-dir "/var/lib/$service" --name "$name" --no-run
        [ -n "$labels" ] && set -- "$@" --labels "$labels"
        if [ -n "$trust_root" ]; then
            install -m 0644 -o "$user" "$trust_root" "/var/lib/$service/pinned-trust-root.json"
            set -- "$@" --trust-root "/var/lib/$service/pinned-trust-root.json"
        fi
        TERN_TOKEN=$token runuser -u "$user" -- /usr/local/bin/tern-agent join "$@"
    fi
fi

echo "==> systemctl enable --now $service"
systemctl daemon-reload
systemctl enable --now "$service.service"
systemctl --no-pager status "$service.service" || true
