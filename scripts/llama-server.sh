#!/usr/bin/env bash
# Local OpenAI-compatible server for recording cassettes (SmolLM2-135M via
# llama-cpp-python). Usage:
#     scripts/llama-server.sh start PORT   # background; waits for /v1/models
#     scripts/llama-server.sh stop PORT
#     scripts/llama-server.sh status PORT
# Then point the client at http://127.0.0.1:PORT/v1, model "smollm2", any
# api key (the server does not check one).
#
# pid file: /tmp/papertag-llama-server-PORT.pid, log: /tmp/papertag-llama-server-PORT.log
# Env: LLAMA_SEED (default 0), LLAMA_N_THREADS (default 2), LLAMA_N_CTX (4096),
#      START_TIMEOUT seconds (default 120).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECORD_VENV:-$ROOT/.record-venv}"

usage() { echo "usage: $0 start|stop|status PORT" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD="$1"
PORT="$2"
[[ "$PORT" =~ ^[0-9]+$ ]] || usage

PIDFILE="/tmp/papertag-llama-server-$PORT.pid"
LOGFILE="/tmp/papertag-llama-server-$PORT.log"
URL="http://127.0.0.1:$PORT/v1/models"
TIMEOUT="${START_TIMEOUT:-120}"

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

answers() { curl -fsS --max-time 5 "$URL" >/dev/null 2>&1; }

case "$CMD" in
start)
    if pid="$(running_pid)"; then
        if answers; then
            echo "already running (pid $pid) on 127.0.0.1:$PORT"
            exit 0
        fi
        echo "pid $pid is alive but $URL does not answer; stop it first" >&2
        exit 1
    fi
    if answers; then
        echo "something else already answers on port $PORT" >&2
        exit 1
    fi
    GGUF="$("$ROOT/scripts/record-env.sh")"
    # setsid: own session, so it outlives the calling shell.
    setsid "$VENV/bin/python" -m llama_cpp.server \
        --model "$GGUF" \
        --model_alias smollm2 \
        --host 127.0.0.1 --port "$PORT" \
        --n_ctx "${LLAMA_N_CTX:-4096}" \
        --seed "${LLAMA_SEED:-0}" \
        --n_threads "${LLAMA_N_THREADS:-2}" \
        --n_threads_batch "${LLAMA_N_THREADS:-2}" \
        >"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
    for _ in $(seq "$TIMEOUT"); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server exited during start-up; last lines of $LOGFILE:" >&2
            tail -n 20 "$LOGFILE" >&2
            rm -f "$PIDFILE"
            exit 1
        fi
        if answers; then
            echo "started (pid $pid) on http://127.0.0.1:$PORT/v1  log: $LOGFILE"
            exit 0
        fi
        sleep 1
    done
    echo "no answer from $URL after ${TIMEOUT}s; stopping pid $pid" >&2
    kill "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    exit 1
    ;;
stop)
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        echo "not running on port $PORT"
        exit 0
    fi
    kill "$pid"
    for _ in $(seq 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"
    echo "stopped (pid $pid)"
    ;;
status)
    if pid="$(running_pid)" && answers; then
        echo "running (pid $pid) on http://127.0.0.1:$PORT/v1"
    else
        echo "not running on port $PORT"
        exit 1
    fi
    ;;
*) usage ;;
esac
