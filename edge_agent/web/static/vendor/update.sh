#!/usr/bin/env bash
# Reproduce the vendored JavaScript from the npm registry (`make vendor-js`): the web app's htmx, its SSE
# extension and uPlot (edge_agent/web/static/vendor/), and axe-core for the browser tests (tests/web/vendor/).
#
# Each package is fetched with `npm pack NAME@VERSION` into a temp dir (no install scripts run), its tarball
# checked against the pinned npm integrity (sha512), then only the minified file(s) and the licence(s) are
# copied. PROVENANCE.md beside the files records the versions, tarball integrity and each file's sha256;
# `update.sh --check` recomputes those and fails if a committed file differs (no network needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
web="$here"
tests="$root/tests/web/vendor"

# name version integrity (npm's dist.integrity) destination  src:dest ...
PACKAGES=(
  "htmx.org 2.0.11 sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA== web dist/htmx.min.js:htmx.min.js LICENSE:htmx.LICENSE"
  "htmx-ext-sse 2.2.4 sha512-LJmxVhykyflBWgh5PvbRidcyuqMHlgfajmmzumvKctv9puvsufeH6OaejSMZTNTnEI8O2wXXn4ZZtBdpEMqmEQ== web dist/sse.min.js:htmx-ext-sse.min.js LICENSE:htmx-ext-sse.LICENSE"
  "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw== web dist/uPlot.iife.min.js:uPlot.iife.min.js dist/uPlot.min.css:uPlot.min.css LICENSE:uPlot.LICENSE"
  "axe-core 4.14.1 sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ== tests axe.min.js:axe.min.js LICENSE:axe-core.LICENSE LICENSE-3RD-PARTY.txt:axe-core.LICENSE-3RD-PARTY.txt"
)

sha256() { sha256sum "$1" | cut -d' ' -f1; }

check() {
  local fail=0 dir file sum
  for dir in "$web" "$tests"; do
    while read -r file sum; do
      [ "$(sha256 "$dir/$file")" = "$sum" ] || { echo "MISMATCH $dir/$file" >&2; fail=1; }
    done < <(sed -n 's/^| `\([^`]*\)` | `\([0-9a-f]\{64\}\)` |.*/\1 \2/p' "$dir/PROVENANCE.md")
  done
  [ $fail = 0 ] && echo "vendored files match PROVENANCE.md"
  return $fail
}

if [ "${1:-}" = "--check" ]; then check; exit; fi

command -v npm >/dev/null || { echo "npm is needed (apt-get install npm)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
declare -A rows=([web]="" [tests]="")
for spec in "${PACKAGES[@]}"; do
  read -r name version integrity where files <<<"$spec"
  dest="$web"; [ "$where" = tests ] && dest="$tests"
  mkdir -p "$dest" "$tmp/$name"
  (cd "$tmp/$name" && npm pack --silent "$name@$version" >/dev/null)
  tgz="$(ls "$tmp/$name"/*.tgz)"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  [ "$got" = "$integrity" ] || { echo "$name@$version: tarball integrity $got, expected $integrity" >&2; exit 1; }
  tar -xzf "$tgz" -C "$tmp/$name"
  # the licence as package.json names it, else the licence file's first line (htmx-ext-sse names none)
  license="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("license") or open(sys.argv[2]).readline().strip())' "$tmp/$name/package/package.json" "$tmp/$name/package/LICENSE")"
  for pair in $files; do
    src="${pair%%:*}" out="${pair##*:}"
    cp "$tmp/$name/package/$src" "$dest/$out"
    rows[$where]+="| \`$out\` | \`$(sha256 "$dest/$out")\` | $name@$version | \`package/$src\` | $license |"$'\n'
  done
  echo "$name@$version ok ($integrity)"
done

write() {  # dir, title, intro, rows
  {
    echo "# $2"
    echo
    echo "$3"
    echo
    echo "Reproduce with \`make vendor-js\` (\`edge_agent/web/static/vendor/update.sh\`: \`npm pack NAME@VERSION\` into a"
    echo "temp dir, the tarball checked against the pinned npm integrity below, then the listed files copied unchanged)."
    echo "Check the committed files without network: \`edge_agent/web/static/vendor/update.sh --check\`."
    echo
    echo "| package | version | npm tarball integrity |"
    echo "|---|---|---|"
    for spec in "${PACKAGES[@]}"; do
      read -r name version integrity where _ <<<"$spec"
      [ "$where" = "$4" ] && echo "| $name | $version | \`$integrity\` |"
    done
    echo
    echo "| file | sha256 | from | path in the tarball | licence |"
    echo "|---|---|---|---|---|"
    printf '%s' "${rows[$4]}"
  } >"$1/PROVENANCE.md"
}
write "$web" "Vendored JavaScript of the household web app" \
  "Served by the gateway from \`/static/vendor/\` (a gateway may have no internet; no CDN, no build step).

Why htmx 2.0.11 and not npm's \`latest\` (4.0.x): 4.0.0 came out in September 2026 and rewrote the library
(fetch() instead of XMLHttpRequest, explicit attribute inheritance, renamed events and a changed extension
API); 2.x is the line deployed widely for years, still maintained (2.0.11, September 2026), and its behaviour
is what the htmx documentation, the SSE extension and our templates assume. The app uses a small subset
(hx-get/hx-post/hx-swap/hx-trigger, hx-headers for the CSRF token, SSE for live scan progress); moving to 4.x
is a deliberate change of its own later, not a side effect of re-vendoring." web
write "$tests" "Vendored JavaScript for the browser tests" \
  "axe-core is injected into pages by \`tests/webkit.py\` (\`axe_violations\`); it is never served by the app." tests
check
