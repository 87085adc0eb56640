#!/bin/sh
# Build the C client with the system compiler and run it confined:
#
#     sh examples/c_client/run.sh
#
# The binary is compiled into a temporary directory, which must be in the
# child's view to be executed: a small policy extends `minimal` with it in
# [view] read. The file the client reads is NOT in its view: the policy
# grants it with serve = "broker", so only the broker can open it, and hands
# it over (a plain --allow-read would be served by the kernel: bound into
# the view, where the client could open it by itself).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
privsep=${PRIVSEP:-$repo/.venv/bin/privsep}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin" "$work/data"
chmod 755 "$work/bin"   # the child runs as another uid (65534): it must read and execute the binary

${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -o "$work/bin/client" "$here/client.c"
echo "Hello from a file only the broker can open." > "$work/data/greeting.txt"
cat > "$work/policy.toml" <<POLICY
# minimal, plus the directory holding the compiled client (read-only), and
# the greeting served by the broker only. Transparent brokering is off: this
# client shows the wire protocol, so its own open() of the file must fail,
# and only the protocol's open succeeds.
extends = "minimal"
[view]
read = ["$work/bin"]
[[files]]
path = "$work/data/greeting.txt"
access = ["read"]
serve = "broker"
[transparent]
files = false
POLICY

echo "\$ privsep run --policy $work/policy.toml -- $work/bin/client ..."
"$privsep" run --policy "$work/policy.toml" -- "$work/bin/client" "$work/data/greeting.txt" /etc/shadow
