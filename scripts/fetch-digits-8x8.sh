#!/usr/bin/env bash
# Fetches the 8x8 handwritten digits (UCI optdigits test set, E. Alpaydin and
# C. Kaynak 1998, the copy scikit-learn ships as digits.csv.gz: 1,797 images
# of 8x8 pixels in 0..16) from PyPI's scikit-learn 1.9.1 wheel and writes them
# as the four IDX files natgrad reads into DIR (default data/digits-8x8/, not
# committed): pixels scaled to 0..255, the first 1,437 images (80%) as the
# training split, the last 360 as the test split. Then:
#
#   cargo run --release -- race --data data/digits-8x8 --sizes 64-32-16-32-64
#
# Needs python3 and pip (or a wheel at $WHEEL). The SHA-256 of digits.csv.gz
# is checked before anything is written.
set -euo pipefail
dir="${1:-data/digits-8x8}"
sha="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
wheel="${WHEEL:-}"
if [ -z "$wheel" ]; then
  python3 -m pip download scikit-learn==1.9.1 --no-deps --only-binary=:all: -q -d "$tmp"
  wheel="$(ls "$tmp"/scikit_learn-*.whl | head -n1)"
fi
mkdir -p "$dir"
python3 - "$wheel" "$dir" "$sha" <<'PY'
import gzip, hashlib, struct, sys, zipfile
wheel, out, sha = sys.argv[1:4]
raw = zipfile.ZipFile(wheel).read("sklearn/datasets/data/digits.csv.gz")
if hashlib.sha256(raw).hexdigest() != sha:
    sys.exit("digits.csv.gz: unexpected SHA-256; nothing written")
rows = [list(map(int, l.split(","))) for l in gzip.decompress(raw).decode().split()]
assert len(rows) == 1797 and all(len(r) == 65 for r in rows)
cut = 1437
def write(prefix, part):
    with open(f"{out}/{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(part), 8, 8))
        f.write(bytes(round(v * 255 / 16) for r in part for v in r[:64]))
    with open(f"{out}/{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(part)))
        f.write(bytes(r[64] for r in part))
write("train", rows[:cut])
write("t10k", rows[cut:])
print(f"wrote {out}: {cut} training and {len(rows) - cut} test images of 8 x 8")
PY
