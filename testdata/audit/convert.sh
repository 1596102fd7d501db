#!/usr/bin/env bash
# Regenerates audit-message.rng from the standard's audit-message.rnc (see README.md here).
# The standard's text puts `##` documentation comments after the values they describe, which
# the RELAX NG compact grammar does not allow (trang: "syntax error" at line 27); they are made
# plain `#` comments, nothing else changes. Needs Debian's `trang`.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp --suffix=.rnc)
trap 'rm -f "$tmp"' EXIT
sed 's/##/#/g' audit-message.rnc >"$tmp"
trang -I rnc -O rng "$tmp" audit-message.rng
