#!/usr/bin/env bash
# Fetches Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT license) as the four
# standard IDX .gz files, from Debian's dataset-fashion-mnist package, into
# DIR (default data/fashion-mnist/, not committed). Then:
#
#   cargo run --release -- race --preset all --data data/fashion-mnist
#
# The package is the upstream repository at commit 55506a9; its SHA-256 is
# checked before anything is extracted.
set -euo pipefail
dir="${1:-data/fashion-mnist}"
deb="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
url="http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/$deb"
sha="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if command -v curl >/dev/null; then
  curl -fsSL -o "$tmp/$deb" "$url"
else
  (cd "$tmp" && apt-get download dataset-fashion-mnist)
fi
echo "$sha  $tmp/$deb" | sha256sum -c --quiet
mkdir -p "$tmp/x" "$dir"
dpkg-deb -x "$tmp/$deb" "$tmp/x" 2>/dev/null || (cd "$tmp/x" && ar x "../$deb" && tar -xf data.tar.*)
cp "$tmp"/x/usr/share/datasets/fashion-mnist/*-ubyte.gz "$dir"/
ls -l "$dir"
