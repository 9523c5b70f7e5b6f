#!/usr/bin/env bash
# Loaded-host demonstration: the same deep race (ng, sgd; 35 s each; seed 1)
# under both clocks, quiet and with a busy loop on one core started halfway.
set -u
mkdir -p "${OUT:-clock-demo}"
bin="${NATGRAD:-target/release/natgrad}"
for clock in sequential interleaved; do
  for load in quiet loaded; do
    out="${OUT:-clock-demo}/$clock-$load"
    rm -rf $out
    start=$(date +%s)
    $bin race --clock $clock --optimizers ng,sgd --budget 35 --quiet --out $out > $out.txt 2>&1 &
    pid=$!
    if [ $load = loaded ]; then
      sleep 40   # about halfway through the ~80 s race
      ( while :; do :; done ) & busy=$!
      wait $pid; kill $busy
    else
      wait $pid
    fi
    echo "$clock $load: $(( $(date +%s) - start )) s"; grep -E "^(ng|sgd) " $out.txt
  done
done
