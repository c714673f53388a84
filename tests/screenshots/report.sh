#!/usr/bin/env bash
# Screenshots of the HTML report (`tokenwise report --format html`) in headless Chromium, for
# eyeballing the page's layout: the headline cards, the chart's buckets, the groups table at
# 1280 px and the chart on a phone.
#
# Run from anywhere in the repository:
#
#     tests/screenshots/report.sh            # pages and screenshots into target/screenshots/
#     CHROMIUM=/path/to/chrome tests/screenshots/report.sh
#
# It needs cargo and Chromium (`/usr/bin/chromium`, e.g. `apt-get install chromium`). Not part
# of CI and not run by `cargo test`: it checks nothing by itself; look at the PNGs. The pages
# come from the example `report_pages` (examples/report_pages.rs), which renders the
# fixtures of src/report/render/fixtures.rs: the sample (a 12-hour period, by team), one day
# with traffic in three hours, long workflow names (by workflow), team / workflow pairs, two
# weeks of traffic, by tier, a single hour and no traffic.
#
# Each page is shot at 1280×900 (a laptop) and 390×844 (a phone), what a screen shows without
# scrolling, and again as a tall shot (`-full`) that shows the whole page at the same width.
# Last, the page a running server serves on its metrics port (`GET /report`), by team and by
# workflow (`served-*.png`).
# It also prints, per page, how wide the groups table lays out at 1280 px against its card
# (measured by a script added to a copy of the page under measure/; the pages themselves have
# no script).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/target/screenshots"
chromium="${CHROMIUM:-chromium}"
mkdir -p "$out"

cd "$root"
cargo run --quiet --example report_pages -- "$out" >/dev/null

shot() { # page width height file
    "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size="$2,$3" --screenshot="$4" "file://$out/$1" 2>/dev/null >/dev/null
}

# The groups table's laid-out width and its card's inner width at 1280 px, as `table/card`.
measure='<script>const t=document.querySelector("table.groups");
document.body.innerHTML="<pre id=fit>"+t.scrollWidth+"/"+t.parentElement.clientWidth+"</pre>";</script>'
mkdir -p "$out/measure"

status=0
for page in sample day workflow team-workflow days tier single empty; do
    html="report-$page.html"
    shot "$html" 1280 900 "$out/$page-1280.png"
    shot "$html" 390 844 "$out/$page-390.png"
    shot "$html" 1280 2400 "$out/$page-1280-full.png"
    shot "$html" 390 4200 "$out/$page-390-full.png"

    sed "s#</main>#</main>${measure//$'\n'/ }#" "$out/$html" >"$out/measure/$html"
    fit="$("$chromium" --headless --no-sandbox --disable-gpu --window-size=1280,900 \
        --dump-dom "file://$out/measure/$html" 2>/dev/null | sed -n 's#.*<pre id="fit">\(.*\)</pre>.*#\1#p')"
    if [[ "$fit" =~ ^([0-9]+)/([0-9]+)$ ]] && ((BASH_REMATCH[1] <= BASH_REMATCH[2])); then
        echo "$page: groups table fits at 1280 px ($fit px)"
    else
        echo "$page: groups table OVERFLOWS its card at 1280 px (${fit:-not measured} px)"
        status=1
    fi
done
# The page as a running server serves it on its metrics port (`GET /report`): a server on
# embedded defaults, a few routed and graded tasks, then the page by team and by workflow.
cargo build --quiet
bin="$root/target/debug/tokenwise"
grpc="127.0.0.1:${REPORT_GRPC_PORT:-50091}"
web="127.0.0.1:${REPORT_WEB_PORT:-9491}"
"$bin" serve --listen "$grpc" --metrics-listen "$web" >"$out/served.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://$web/metrics" >/dev/null && break; sleep 0.2; done
for task in "What is 2+2?" "Summarise this paragraph in one sentence." \
    "Prove that there are infinitely many primes, then implement a segmented sieve in Rust."; do
    id="$("$bin" route --addr "$grpc" --workflow faq "$task" | awk '/^decision_id/ {print $2}')"
    [[ -n "$id" ]] && "$bin" reuse --addr "$grpc" "$id" --count 3 >/dev/null || true
done
for by in team workflow; do
    curl -sf "http://$web/report?since=day&by=$by" >"$out/served-$by.html"
    shot "served-$by.html" 1280 900 "$out/served-$by-1280.png"
    shot "served-$by.html" 390 844 "$out/served-$by-390.png"
done
echo "screenshots in $out"
exit "$status"
