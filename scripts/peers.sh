#!/usr/bin/env bash
# Build or start the engines NightOwl is compared with (bench/generation.py) and deployed on.
#
#   bash scripts/peers.sh llama-server   build llama.cpp's C++ llama-server once (cached under
#                                        var/peers/), print the binary's path on stdout
#   bash scripts/peers.sh gguf           print the embedded model's GGUF path (for llama-server -m)
#   bash scripts/peers.sh vllm [ARGS]    same as `bash scripts/vllm.sh start [ARGS]`
#
# llama-server is built from the llama-cpp-python==0.3.36 sdist's vendor/llama.cpp (the same
# llama.cpp the Python binding ships), native CPU flags, statically linked so the one binary can
# be moved; ~5 minutes on 2 cores (an interrupted build resumes where it stopped). Nothing is
# downloaded at build time (the prebuilt web UI download is switched off). AMX is compiled out:
# this VM's CPU lists AMX and the kernel grants it, but its first `tilezero` dies with SIGILL
# ("Illegal instruction" while loading the model); -mno-amx-* wins over -march=native in GCC.
# Environment: NIGHTOWL_PEERS_DIR (default var/peers under the repo),
# NIGHTOWL_BUILD_JOBS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

LCP_VERSION="0.3.36"
PEERS="${NIGHTOWL_PEERS_DIR:-$ROOT/var/peers}"
JOBS="${NIGHTOWL_BUILD_JOBS:-2}"
BIN="$PEERS/bin/llama-server"
MARKER="$PEERS/bin/.llama-server-version"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON
             -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
             -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
             "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")

say() { echo "peers.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

pipq() {  # pip, minus the machine's warnings about absent local index folders
    "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

build_llama_server() {
    local want="llama-cpp-python==$LCP_VERSION ${CMAKE_FLAGS[*]}"
    if [ -x "$BIN" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want" ]; then
        echo "$BIN"
        return 0
    fi
    command -v cmake >/dev/null || die "cmake is missing: apt-get install -y cmake g++"
    command -v c++ >/dev/null || die "a C++ compiler is missing: apt-get install -y g++"
    local py="$ROOT/.venv/bin/python"
    [ -x "$py" ] || py="${PYTHON:-python3}"
    local started=$SECONDS dl="$PEERS/dl"
    local sdist="$dl/llama_cpp_python-$LCP_VERSION.tar.gz"
    mkdir -p "$dl" "$PEERS/bin"
    if [ ! -f "$sdist" ]; then
        say "downloading the llama-cpp-python $LCP_VERSION sdist..."
        pipq "$py" -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$dl"
    fi
    [ -f "$sdist" ] || die "pip did not leave $sdist"
    local work="$PEERS/build-$LCP_VERSION"
    local src="$work/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
    if [ ! -f "$src/CMakeLists.txt" ]; then  # else resume the interrupted build in place
        rm -rf "$work"
        mkdir -p "$work"
        tar xzf "$sdist" -C "$work" "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
    fi
    say "building llama-server (about 5 minutes on 2 cores; log: $work/build.log)..."
    if ! { cmake -S "$src" -B "$work/build" "${CMAKE_FLAGS[@]}" \
           && cmake --build "$work/build" --target llama-server -j "$JOBS"; } \
           >"$work/build.log" 2>&1; then
        tail -n 30 "$work/build.log" >&2
        die "the build failed (full log: $work/build.log)"
    fi
    local out
    out="$(find "$work/build" -type f -name llama-server -perm -u+x | head -n 1)"
    [ -n "$out" ] || die "the build produced no llama-server binary (see $work/build.log)"
    cp "$out" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
    printf '%s' "$want" > "$MARKER"
    rm -rf "$work"  # the sources and objects (~hundreds of MB); the sdist stays in $dl
    "$BIN" --version 2>&1 | head -n 1 >&2 || true
    say "llama-server built in $((SECONDS - started)) s."
    echo "$BIN"
}

gguf() {
    "$ROOT/.venv/bin/python" -c "from llm.embedded import gguf_path; print(gguf_path())"
}

case "${1:-}" in
    llama-server) build_llama_server ;;
    gguf) gguf ;;
    vllm) shift; exec bash "$ROOT/scripts/vllm.sh" start "$@" ;;
    *) echo "usage: bash scripts/peers.sh llama-server | gguf | vllm [--port P] [--model DIR]" >&2
       exit 2 ;;
esac
