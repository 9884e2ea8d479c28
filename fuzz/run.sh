#!/usr/bin/env bash
# Runs each fuzz target (SIP messages, framing, URIs, SDP, RTP, digest auth, transactions) for a bounded time, from a seed corpus.
#
#   fuzz/run.sh [SECONDS] [TARGET...]       default: 60 s each, all targets
#   fuzz/run.sh --regressions               replays fuzz/regressions/ (no fuzzing)
#
# Seeds: the RFC 4475 torture messages (copied in at run time from $RFC4475_DIR, default
# ../shared/data/rfc4475 beside the repository) and the messages in fuzz/seeds/. The corpus
# grows in fuzz/corpus/<target>/ (not committed); crashes land in fuzz/artifacts/<target>/.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
rfc4475="${RFC4475_DIR:-$repo/../shared/data/rfc4475}"
all_targets=(parse_message stream_frame uri sdp rtp auth transaction)

cd "$here"

if [[ "${1:-}" == "--regressions" ]]; then
    unset SIP_FUZZ_TOLERATE
    cargo +nightly fuzz build -O
    bin_dir="${CARGO_TARGET_DIR:-$here/target}/x86_64-unknown-linux-gnu/release"
    status=0
    for t in "${all_targets[@]}"; do
        dir="$here/regressions/$t"
        [[ -d "$dir" ]] || continue
        for f in "$dir"/*; do
            [[ -f "$f" ]] || continue
            if "$bin_dir/$t" "$f" >/dev/null 2>&1; then
                echo "fixed: $t $(basename "$f")"
            else
                echo "FAILS: $t $(basename "$f")"
                status=1
            fi
        done
    done
    exit "$status"
fi

seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")

messages=()
if [[ -d "$rfc4475" ]]; then
    messages+=("$rfc4475"/*.dat)
else
    echo "warning: no RFC 4475 messages at $rfc4475; seeding from fuzz/seeds only" >&2
fi
messages+=("$here"/seeds/parse_message/*)

seed_parse_message() {
    local dir=$1
    for m in "${messages[@]}"; do cp "$m" "$dir/$(basename "$m")"; done
}

seed_stream_frame() {
    # Two control octets (max_size selector, chunking seed), then a stream of messages with
    # keep-alives between them.
    local dir=$1 i=0 prev=""
    for m in "${messages[@]}"; do
        i=$((i + 1))
        { printf '\x04\x%02x' $((i % 256)); cat "$m"; } >"$dir/one-$(basename "$m")"
        if [[ -n "$prev" ]]; then
            { printf '\x03\x%02x' $((i * 7 % 256)); cat "$prev"; printf '\r\n\r\n'; cat "$m"; printf '\r\n'; } \
                >"$dir/two-$(basename "$m")"
        fi
        prev=$m
    done
}

seed_uri() {
    # Request-URIs of the messages, plus the hand-written URIs and name-addrs.
    local dir=$1 i=0 line
    for m in "${messages[@]}"; do
        i=$((i + 1))
        head -n 1 "$m" | tr -d '\r' | awk '{ if (NF == 3) printf "%s", $2 }' >"$dir/ruri-$i"
        [[ -s "$dir/ruri-$i" ]] || rm -f "$dir/ruri-$i"
    done
    i=0
    while IFS= read -r line; do
        i=$((i + 1))
        printf '%s' "$line" >"$dir/seed-$i"
    done <"$here/seeds/uris.txt"
}

seed_sdp() {
    # The SDP bodies of the messages (after the blank line), and the hand-written ones
    # (offer-answer.sdp: an offer, a NUL, an answer).
    local dir=$1 i=0
    for m in "${messages[@]}"; do
        i=$((i + 1))
        awk 'body { print } /^\r?$/ { body = 1 }' "$m" >"$dir/body-$i"
        grep -q '^v=' "$dir/body-$i" || rm -f "$dir/body-$i"
    done
    cp "$here"/seeds/sdp/* "$dir/"
}

seed_rtp() {
    # Records `len | arrival (4) | datagram`: a PCMU stream across a sequence wrap, an RTCP
    # sender report, a STUN binding request, a DTMF event.
    local dir=$1
    {
        for s in fffe ffff 0000 0001; do
            printf "\\x0c\\x00\\x00\\x10\\x00\\x80\\x00\\x${s:0:2}\\x${s:2:2}\\x00\\x00\\x00\\xa0\\x12\\x34\\x56\\x78"
        done
    } >"$dir/pcmu-wrap"
    printf '\x08\x00\x00\x00\x01\x80\xc8\x00\x06\x12\x34\x56\x78' >"$dir/rtcp-sr"
    printf '\x14\x00\x00\x00\x02\x00\x01\x00\x00\x21\x12\xa4\x42\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c' >"$dir/stun"
    printf '\x10\x00\x00\x00\x03\x80\xe5\x00\x07\x00\x00\x01\x40\x12\x34\x56\x78\x01\x0a\x00\xa0' >"$dir/dtmf"
}

seed_auth() {
    # The WWW-Authenticate / Authorization values of the messages (challenge, NUL,
    # credentials), and the hand-written pairs.
    local dir=$1 i=0
    for m in "${messages[@]}"; do
        i=$((i + 1))
        local ch cr
        ch=$(grep -ai '^\(www\|proxy\)-authenticate:' "$m" | head -n 1 | cut -d: -f2- | tr -d '\r') || true
        cr=$(grep -ai '^\(proxy-\)\?authorization:' "$m" | head -n 1 | cut -d: -f2- | tr -d '\r') || true
        [[ -n "$ch$cr" ]] && printf '%s\0%s' "$ch" "$cr" >"$dir/msg-$i"
    done
    cp "$here"/seeds/auth/* "$dir/"
}

seed_transaction() {
    # Each machine over UDP and TCP: a provisional then a final (180 then 200, or 486), ACKs,
    # retransmissions, and timers fired on time.
    local dir=$1 m
    for m in 0 1 2 3 4 5 6 7; do
        printf "\\x$(printf '%02x' $((m | 8)))\\x03\\x00\\x50\\x01\\x00\\x00\\x03\\x00\\x64\\x05\\x00\\x00\\x01\\x00\\x00\\x01\\x00\\x00" >"$dir/ok-$m"
        printf "\\x$(printf '%02x' $((m | 16)))\\x04\\x00\\x00\\x03\\x01\\x82\\x04\\x00\\x00\\x05\\x00\\x00\\x00\\x7f\\xff\\x01\\x00\\x00" >"$dir/busy-$m"
    done
}

# Known defects (listed in fuzz/regressions/README.md) stepped over while fuzzing, so the
# run can find new ones; --regressions replays them without this. None is open now; set
# SIP_FUZZ_TOLERATE=name,... to step over one while it is being fixed.
export SIP_FUZZ_TOLERATE="${SIP_FUZZ_TOLERATE-}"

cargo +nightly fuzz build -O
status=0
for t in "${targets[@]}"; do
    corpus="$here/corpus/$t"
    mkdir -p "$corpus" "$here/artifacts/$t"
    "seed_$t" "$corpus"
    echo "== $t: ${seconds}s (tolerating known defects: $SIP_FUZZ_TOLERATE)"
    dict="$here/sip.dict"
    [[ -f "$here/$t.dict" ]] && dict="$here/$t.dict"
    [[ "$t" == rtp ]] && dict=""
    if ! cargo +nightly fuzz run -O "$t" "$corpus" -- \
        -max_total_time="$seconds" ${dict:+-dict="$dict"} -max_len=4096 \
        -print_final_stats=1 -close_fd_mask=1; then
        echo "== $t: CRASH (see $here/artifacts/$t/)"
        status=1
    fi
done
exit "$status"
