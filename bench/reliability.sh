#!/usr/bin/env bash
# `make reliability`: the reliability suites at full size, one test binary at
# a time, then bench/RELIABILITY.md collated from the markdown sections they
# write; nothing in it is typed by hand. A failing suite fails the run, but
# every suite still runs and the file is still written, naming the failure.
#
#   bash bench/reliability.sh [OUT_DIR]                 run everything, collate
#   bash bench/reliability.sh --collate-only OUT_DIR    collate what OUT_DIR holds
#
# OUT_DIR (default .cache/reliability) receives each suite's <name>.md and
# <name>.json (tests/common `report`), its log in logs/, and status.tsv.
#
# Environment:
#   LOOKBOOK_FUZZ_SECONDS  seconds per fuzz target (default 300; `make test`: 2)
#   LOOKBOOK_<NAME>        a suite's own sizes, e.g. LOOKBOOK_SOAK_SECONDS,
#                          LOOKBOOK_CHURN_ROUNDS (tests/common `sized`)
#   CARGO                  cargo to use (default cargo)
set -uo pipefail
cd "$(dirname "$0")/.."

collate_only=0
if [[ ${1:-} == --collate-only ]]; then
    collate_only=1
    shift
    [[ -d ${1:-} ]] || { echo "reliability: --collate-only needs an existing OUT_DIR" >&2; exit 2; }
fi
out="${1:-.cache/reliability}"
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
md=bench/RELIABILITY.md
cargo="${CARGO:-cargo}"

# Test binaries in the order they run and their sections appear. The first
# four are the suites of issue 13; the others have no section of their own
# (pass/fail is what they report) unless they write one.
suites=(crash_loop torn_files churn soak reliability integrity hostile_inputs fuzz_decode)
# Sections in the order they appear; a suite may write several (torn_files
# writes torn_files and torn_store). Sections not named here follow, sorted.
sections=(crash_loop torn_files torn_store churn soak recovery)

export LOOKBOOK_RELIABILITY_FULL=1
export LOOKBOOK_RELIABILITY_OUT="$out"
export LOOKBOOK_FUZZ_SECONDS="${LOOKBOOK_FUZZ_SECONDS:-300}"
command_line="make reliability, i.e. LOOKBOOK_RELIABILITY_FULL=1 LOOKBOOK_FUZZ_SECONDS=$LOOKBOOK_FUZZ_SECONDS bash bench/reliability.sh $out"

started=$(date +%s)
step() { echo "reliability [$(( $(date +%s) - started )) s]: $*"; }

# status.tsv: name, result (passed / FAILED (exit N) / ...), seconds.
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/status.tsv"; }

# run NAME COMMAND...: runs one suite with its output in logs/NAME.log.
run() {
    local name=$1 t0 rc
    shift
    step "$name"
    t0=$(date +%s)
    "$@" > "$out/logs/$name.log" 2>&1
    rc=$?
    if (( rc == 0 )); then
        record "$name" passed "$(( $(date +%s) - t0 ))"
    else
        record "$name" "FAILED (exit $rc)" "$(( $(date +%s) - t0 ))"
        step "$name FAILED (exit $rc): $out/logs/$name.log"
    fi
}

if (( ! collate_only )); then
    rm -f "$out"/*.md "$out"/*.json "$out"/status.tsv "$out"/run.txt "$out"/logs/*.log
    # What the collation (possibly a later --collate-only) says about the run.
    printf '%s\n%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$command_line" > "$out/run.txt"
    present=()
    for s in "${suites[@]}"; do
        if [[ -f tests/$s.rs ]]; then
            present+=(--test "$s")
        else
            record "$s" "FAILED (no tests/$s.rs)" 0
        fi
    done
    # Built once up front, so that no suite's time includes compiling.
    step "build: ${present[*]}"
    if "$cargo" test --release --locked --features tooling --no-run "${present[@]}" > "$out/logs/build.log" 2>&1; then
        for s in "${suites[@]}"; do
            [[ -f tests/$s.rs ]] || continue
            # One test at a time inside a binary too: several suites measure
            # memory and time, which tests running beside them would skew.
            run "$s" "$cargo" test --release --locked --features tooling --test "$s" -- --nocapture --test-threads 1
        done
    else
        step "build FAILED: $out/logs/build.log"
        for s in "${suites[@]}"; do
            [[ -f tests/$s.rs ]] && record "$s" "FAILED (build; see logs/build.log)" 0
        done
    fi
    # Start-up after kill -9 at 100K and 1M (writes recovery.md into $out).
    if [[ -f bench/recovery.sh ]]; then
        run recovery bash bench/recovery.sh "$out"
    fi
fi

# What a failed suite printed when it failed: its panic messages (without
# backtraces), else the end of its log.
failure_excerpt() {
    local log=$1 excerpt
    [[ -f $log ]] || { echo "(no log)"; return; }
    excerpt=$(awk '
        /panicked at/ { n++; keep = (n <= 3); lines = 0 }
        /^stack backtrace:|^note: / { keep = 0 }
        keep && lines < 8 { print; lines++ }
    ' "$log")
    if [[ -n $excerpt ]]; then
        echo "$excerpt"
    else
        tail -n 15 "$log"
    fi
}

step "collate: $md"
if [[ -f $out/run.txt ]]; then
    run_started=$(sed -n 1p "$out/run.txt")
    command_line=$(sed -n 2p "$out/run.txt")
else
    run_started="unknown (collated with --collate-only from $out)"
    command_line="bash bench/reliability.sh --collate-only $out"
fi
status="$out/status.tsv"
[[ -f $status ]] || : > "$status"
total=$(wc -l < "$status")
failed=$(awk -F'\t' '$2 != "passed"' "$status" | wc -l)
cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
commit=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
git diff --quiet HEAD -- 2> /dev/null || commit="$commit (with uncommitted changes)"
{
    echo "# lookbook reliability results"
    echo
    echo "Every figure below was written by the suites themselves in one \`make reliability\` run (bench/reliability.sh) and collated here; none is typed by hand. The same figures for tools: the \`<suite>.json\` files of the run's output directory."
    echo
    echo "- **When**: started $run_started, collated $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- **Commit**: $commit"
    echo "- **Machine**: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB RAM, $(uname -sr)"
    echo "- **Command**: \`$command_line\`"
    if (( failed == 0 )); then
        echo "- **Outcome**: all $total passed"
    else
        echo "- **Outcome**: **$failed of $total FAILED**: $(awk -F'\t' '$2 != "passed" { printf "%s%s", sep, $1; sep = ", " }' "$status")"
    fi
    echo
    echo "| suite | result | seconds |"
    echo "| --- | --- | --- |"
    awk -F'\t' '{ r = ($2 == "passed") ? $2 : "**" $2 "**"; printf "| %s | %s | %s |\n", $1, r, $3 }' "$status"
    echo
    # Failures first, so that nobody reads a section's figures without
    # seeing that its suite failed.
    awk -F'\t' '$2 != "passed" { print $1 "\t" $2 }' "$status" | while IFS=$'\t' read -r name result; do
        echo "## $name: $result"
        echo
        echo "From \`logs/$name.log\`:"
        echo
        echo '```'
        failure_excerpt "$out/logs/$name.log"
        echo '```'
        echo
    done
    others=()
    for f in "$out"/*.md; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .md)
        [[ " ${sections[*]} " == *" $name "* ]] || others+=("$name")
    done
    for name in "${sections[@]}" "${others[@]}"; do
        [[ -f $out/$name.md ]] || continue
        cat "$out/$name.md"
        echo
    done
} > "$md"
step "done: $md ($failed of $total failed)"
(( failed == 0 ))
