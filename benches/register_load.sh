#!/usr/bin/env bash
# REGISTER load with digest auth against a release `powerdial serve`
# (SPEC §6 "REGISTER with digest auth ... every binding persisted"; SPEC §5
# "none is ever dropped, under any load").
#
#   bash benches/register_load.sh            # 10,000 agents, SQLite
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test bash benches/register_load.sh
#
# 1. Writes a config with $AGENTS `[[agent]]` entries and a SIPp injection
#    file with one line per agent (as many distinct users as a run has
#    registrations; the whole `[authentication …]` keyword is in the field,
#    SIPp 3.6 does not expand fields inside it).
# 2. Sweeps $RATES (REGISTER cycles/s: 401, REGISTER with credentials,
#    200), one run of $AGENTS registrations each, and reports per rate the
#    achieved rate, failed calls, SIPp retransmissions, powerdial's CPU per
#    cycle, and its "persistence is behind" warnings. A run is clean when
#    nothing failed, nothing was retransmitted and the achieved rate is
#    within 5 % of the target. The sweep stops at the first unclean rate.
# 3. At the highest clean rate, on a fresh database: starts a run, kills
#    powerdial with SIGKILL half way, lets SIPp finish against the dead
#    port, restarts powerdial, and checks that every binding SIPp logged a
#    200 OK for more than 100 ms before the kill is registered again
#    (`GET /api/v1/agents`).
#
# Measured here (release, 2 shared cores, SIPp on the same cores, load
# average ~3.5 from other work): highest clean rate 10,000 REGISTER
# cycles/s on SQLite and on PostgreSQL (12,000 asked gives 9,500-10,700:
# SIPp's core is the limit; no failures or retransmissions there either);
# powerdial 63-80 us of CPU per cycle at 10,000/s; no "behind" warnings.
# kill -9 half way at 10,000/s: SQLite 5,240 of 5,240 bindings acknowledged
# >100 ms before the kill restored (6,120 of 6,240 in all; the rest within
# 7.2 ms of the kill), PostgreSQL 6,918 of 6,918 (7,338 of 7,410; the
# rest within 20.1 ms).
#
# Everything stays on 127.0.0.1 and every SIPp run is bounded (-timeout).
# Needs: sipp (sip-tester), jq, python3, cargo. CARGO_TARGET_DIR is honoured.
set -euo pipefail

AGENTS=${AGENTS:-10000}
RATES=${RATES:-"2000 4000 6000 8000 10000 12000 14000"}
SIP_PORT=${SIP_PORT:-25160}
SIPP_PORT=${SIPP_PORT:-25170}
HTTP_PORT=${HTTP_PORT:-25180}
TOKEN=bench-token

repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
if [[ -z "${POWERDIAL_BIN:-}" ]]; then
    (cd "$repo" && cargo build --release --quiet --bin powerdial)
    POWERDIAL_BIN=$target/release/powerdial
fi
work=$(mktemp -d /tmp/register-load.XXXXXX)
server_pid=""
sipp_pid=""
schemas=()
cleanup() {
    [[ -n "$sipp_pid" ]] && kill "$sipp_pid" 2>/dev/null || true
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    for schema in "${schemas[@]}"; do
        psql -q "$DATABASE_URL" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# --- config and injection file ---------------------------------------------
python3 - "$work" "$AGENTS" <<'EOF'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/agents.toml", "w") as toml, open(f"{work}/agents.csv", "w") as csv:
    csv.write("SEQUENTIAL\n")
    for i in range(n):
        u, p = f"load{i:05d}", f"pw-{i}"
        toml.write(f'[[agent]]\nusername = "{u}"\npassword = "{p}"\n\n')
        csv.write(f"{u};[authentication username={u} password={p}]\n")
EOF

write_config() { # $1: database URL
    cat > "$work/powerdial.toml" <<EOF
[server]
sip_listen = ["udp:127.0.0.1:$SIP_PORT"]
http_listen = "127.0.0.1:$HTTP_PORT"
domain = "127.0.0.1"
media_ip = "127.0.0.1"
data_dir = "$work/data"
# SIPp 3.6 answers only MD5 challenges.
digest_algorithms = ["MD5"]

[database]
url = "$1"

[admin]
token = "$TOKEN"

EOF
    cat "$work/agents.toml" >> "$work/powerdial.toml"
}

fresh_database() { # sets db_url to an empty database
    if [[ -n "${DATABASE_URL:-}" ]]; then
        local schema="bench_$RANDOM$RANDOM"
        psql -q "$DATABASE_URL" -c "CREATE SCHEMA $schema" >/dev/null
        schemas+=("$schema")
        db_url="$DATABASE_URL?options=-c%20search_path%3D$schema"
    else
        db_url="sqlite://$work/db-$RANDOM$RANDOM/powerdial.db"
    fi
}

start_server() {
    POWERDIAL_LOG=${POWERDIAL_LOG:-info} "$POWERDIAL_BIN" serve --config "$work/powerdial.toml" \
        >>"$work/powerdial.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 200); do
        if curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" \
            "http://127.0.0.1:$HTTP_PORT/api/v1/agents/load00000"; then
            return
        fi
        sleep 0.1
    done
    echo "powerdial did not start; log in $work/powerdial.log" >&2
    exit 1
}

cpu_ticks() { # utime + stime of the server, in clock ticks
    awk '{print $14 + $15}' "/proc/$server_pid/stat"
}

registered_agents() { # agents the API shows as registered, one a line
    curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP_PORT/api/v1/agents" |
        jq -r '.data[] | select(.registered) | .username'
}

sipp_run() { # $1 rate, $2 run dir, then extra sipp args
    local rate=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    local limit=$((AGENTS / rate * 4 + 20))
    (cd "$dir" && exec sipp -sf "$repo/fixtures/sipp/register_auth_inf.xml" \
        -inf "$work/agents.csv" -m "$AGENTS" -r "$rate" -t u1 \
        -i 127.0.0.1 -p "$SIPP_PORT" -buff_size 4194304 \
        -timeout "${limit}s" -recv_timeout 2000 \
        -trace_stat -stf stat.csv -fd 1 -trace_logs "$@" \
        "127.0.0.1:$SIP_PORT" </dev/null >sipp.out 2>&1)
}

stat_field() { # $1 stat.csv, $2 column name: the last row's value
    python3 - "$1" "$2" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
print(rows[-1][rows[0].index(sys.argv[2])])
EOF
}

acked_users() { # $1 run dir, $2 epoch seconds (float): users acked before it
    cat "$1"/*_logs.log 2>/dev/null |
        awk -v before="$2" '$1 == "ACK" && ($3 + $4 / 1e6) < before { print $2 }' | sort -u
}

# --- sweep -----------------------------------------------------------------
tck=$(getconf CLK_TCK)
fresh_database
write_config "$db_url"
start_server
best=""
printf '%8s %9s %7s %8s %9s %8s %9s\n' target achieved failed retrans "cpu_us" cpu_pct behind_warn
for rate in $RATES; do
    dir="$work/sweep-$rate"
    warn_before=$(grep -c "persistence is behind" "$work/powerdial.log" || true)
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    sipp_run "$rate" "$dir" || true
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    ok=$(stat_field "$dir/stat.csv" "SuccessfulCall(C)")
    failed=$(stat_field "$dir/stat.csv" "FailedCall(C)")
    retrans=$(stat_field "$dir/stat.csv" "Retransmissions(C)")
    warn_after=$(grep -c "persistence is behind" "$work/powerdial.log" || true)
    # Achieved: SIPp's own cumulative call rate (its start-up not counted).
    achieved=$(stat_field "$dir/stat.csv" "CallRate(C)" | cut -d. -f1)
    read -r cpu_us cpu_pct < <(python3 -c "
el = $t1 - $t0; ticks = $c1 - $c0
print(f'{ticks / $tck / max($ok, 1) * 1e6:.1f} {ticks / $tck / el * 100:.0f}')")
    printf '%8s %9s %7s %8s %9s %8s %9s\n' "$rate" "$achieved" "$failed" "$retrans" \
        "$cpu_us" "$cpu_pct%" "$((warn_after - warn_before))"
    if [[ "$failed" == 0 && "$retrans" == 0 && "$ok" == "$AGENTS" ]] &&
        python3 -c "import sys; sys.exit(0 if $achieved >= 0.95 * $rate else 1)"; then
        best=$rate
    else
        break
    fi
done
kill "$server_pid"
wait "$server_pid" || true
server_pid=""
if [[ -z "$best" ]]; then
    echo "no clean rate; log in $work" >&2
    exit 1
fi
echo "highest clean rate: $best REGISTER cycles/s ($AGENTS agents)"
if [[ "$best" == "${RATES##* }" ]]; then
    echo "  (the highest rate tried was clean: try higher RATES)"
fi

# --- kill -9 half way at the highest clean rate, on a fresh database --------
fresh_database
write_config "$db_url"
start_server
dir="$work/kill"
sipp_run "$best" "$dir" &
sipp_pid=$!
sleep "$(python3 -c "print($AGENTS / $best / 2)")"
kill -9 "$server_pid"
killed_at=$(date +%s.%N)
wait "$server_pid" 2>/dev/null || true
server_pid=""
wait "$sipp_pid" || true
sipp_pid=""
start_server
acked_users "$dir" "$(python3 -c "print($killed_at - 0.1)")" >"$work/acked.txt"
acked_users "$dir" 1e12 >"$work/acked-all.txt"
registered_agents | sort -u >"$work/restored.txt"
acked=$(wc -l <"$work/acked.txt")
restored=$(comm -12 "$work/acked.txt" "$work/restored.txt" | wc -l)
lost=$(comm -23 "$work/acked.txt" "$work/restored.txt" | wc -l)
echo "kill -9 after $(wc -l <"$work/acked-all.txt") acknowledged (of $AGENTS started at $best/s):"
echo "  acknowledged more than 100 ms before the kill: $acked"
echo "  restored after restart: $restored, lost: $lost"
unsaved=$(comm -23 "$work/acked-all.txt" "$work/restored.txt")
if [[ -n "$unsaved" ]]; then
    oldest=$(cat "$dir"/*_logs.log | awk -v k="$killed_at" -v u="$(echo $unsaved)" '
        BEGIN { n = split(u, a, " "); for (i = 1; i <= n; i++) lost[a[i]] = 1; max = 0 }
        $1 == "ACK" && ($2 in lost) { d = (k - ($3 + $4 / 1e6)) * 1000; if (d > max) max = d }
        END { printf "%.1f", max }')
    # How long before the kill the earliest unsaved 200 OK went out: the
    # window the batch writer leaves open (LINGER plus a commit).
    echo "  acknowledged but not restored: $(echo "$unsaved" | wc -l), all within $oldest ms before the kill"
fi
echo "  (bindings restored after restart: $(wc -l <"$work/restored.txt"))"
echo "work dir: $work"
if [[ "$lost" != 0 ]]; then
    exit 1
fi
