#!/bin/sh
# Regenerate booking.wav and booking.json: two short turns spoken by espeak-ng (1.51),
# trimmed, resampled to 16 kHz mono linear16, joined by sox (14.4.2) with 0.3 s of
# leading silence, 1.0 s between the turns and 1.4 s of trailing silence (< 200 KB).
# -D turns dithering off, so the silences are digital zero.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TURN1="Hi, I'd like a table for two."
TURN2="Tomorrow at seven, please."
RATE=16000
speak() {
    espeak-ng -v en-us -s 175 -w "$TMP/raw_$1.wav" "$2"
    # Resample, then trim the synthesizer's own leading and trailing silence.
    sox -D "$TMP/raw_$1.wav" -r $RATE -c 1 -b 16 -e signed-integer "$TMP/turn_$1.wav" \
        silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse
}
speak 1 "$TURN1"
speak 2 "$TURN2"
sox -D -n -r $RATE -c 1 -b 16 -e signed-integer "$TMP/lead.wav" trim 0 0.3
sox -D -n -r $RATE -c 1 -b 16 -e signed-integer "$TMP/gap.wav" trim 0 1.0
sox -D -n -r $RATE -c 1 -b 16 -e signed-integer "$TMP/tail.wav" trim 0 1.4
sox -D "$TMP/lead.wav" "$TMP/turn_1.wav" "$TMP/gap.wav" "$TMP/turn_2.wav" "$TMP/tail.wav" \
    "$HERE/booking.wav"
cat > "$HERE/booking.json" <<JSON
{
  "sample_rate": $RATE,
  "encoding": "linear16",
  "turns": [
    "$TURN1",
    "$TURN2"
  ]
}
JSON
