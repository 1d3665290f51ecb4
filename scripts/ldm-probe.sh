#!/usr/bin/env bash
# ldm-probe.sh PIPELINE OUT.png — do a text-to-image model's layout words matter? Four prompts (dark vs light
# background, "left of" vs "right of"), the same 8 seeds per row (txt2img --batch 8 --seed 1), DDIM 25 steps,
# guidance 4, 32x32, in one montage. Two rows that are identical image for image mean the word is ignored.
# Needs umbra on PATH (or UMBRA=path/to/umbra) and Python 3 with Pillow for the montage.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 PIPELINE_DIR OUT.png" >&2; exit 2; }
model=$1; out=$2; umbra=${UMBRA:-umbra}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
prompts=("a large red circle in the middle on a dark background" "a large red circle in the middle on a light background"
         "a red circle to the left of a blue square" "a red circle to the right of a blue square")
for i in "${!prompts[@]}"; do
  "$umbra" txt2img --model "$model" --prompt "${prompts[$i]}" --width 32 --height 32 --steps 25 --guidance 4 \
    --sampler ddim --batch 8 --seed 1 --out "$tmp/row$i.png" >/dev/null
done
python3 - "$tmp" "$out" <<'PY'
import glob, sys
from PIL import Image
tmp, out = sys.argv[1], sys.argv[2]
rows = [[Image.open(f).convert("RGB").resize((64, 64), Image.NEAREST) for f in sorted(glob.glob(f"{tmp}/row{i}*.png"))]
        for i in range(4)]
im = Image.new("RGB", (max(map(len, rows)) * 66, 4 * 66), (255, 255, 255))
for y, r in enumerate(rows):
    for x, c in enumerate(r):
        im.paste(c, (x * 66, y * 66))
im.save(out)
print("wrote", out)
PY
