#!/usr/bin/env bash
# The MPI tests of feature `mpi` (tests/mpi.rs) under `mpirun -np 2`:
# distributed SGD and natural-gradient steps against the single-process
# step on the combined batch, and a failure on one rank surfacing on every
# rank. Installs Open MPI (and the libclang that mpi-sys's bindgen needs)
# when missing. Exits non-zero on any failure. Usage: scripts/ci-mpi.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if ((${#need[@]})); then
    echo "ci-mpi: installing ${need[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Build the test binary and find its path.
bin=$(cargo test --features mpi --test mpi --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "ci-mpi: building the mpi test failed:" >&2
    cargo test --features mpi --test mpi --no-run >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# One thread per rank; a hang is a failure, not a stuck CI.
export RAYON_NUM_THREADS=1
timeout 300 mpirun -np 2 --oversubscribe "$bin"
