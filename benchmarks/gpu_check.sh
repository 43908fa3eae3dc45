#!/usr/bin/env bash
# The GPU check: set-up (wheels the GPU machine lacks) + benchmarks/gpu_check.py's steps.
#
#   bash benchmarks/gpu_check.sh --wheels DIR [--quick] [--out DIR] [--budget-s N] [--only STEPS]
#   bash benchmarks/gpu_check.sh --cpu-smoke [--out DIR] [--timeout-scale F]
#
# Whole check (set-up included) within --budget-s seconds (default 470: under 8 minutes;
# --quick 260; --cpu-smoke 170). Set-up: the wheels in DIR are installed with
# `pip install --no-index --no-deps --target SITE` (SITE: $CXRJAX_GPU_CHECK_SITE, default
# /tmp/cxrjax-gpu-check-site) and SITE and this checkout go on PYTHONPATH. Not a venv: the
# GPU machine's python3 is itself a venv (/opt/torch/.venv), and a venv made from it with
# --system-site-packages would see the base interpreter's packages, not its JAX and torch.
# Without --wheels nothing is installed (the packages must be importable already).
# --cpu-smoke installs nothing and runs the same steps at tiny sizes on the CPU.
# Python: $PYTHON, else python3. benchmarks/README.md says how to fill the wheels folder.
set -u -o pipefail

# The whole script is one function, read by bash before it runs: editing this file while
# a check runs (bash otherwise reads a script as it goes) cannot change the running check.
main() {
    start=$(date +%s)
    here=$PWD
    cd "$(dirname "$0")/.." || exit 2
    PY=${PYTHON:-python3}
    mode=full
    wheels=""
    budget=""
    out=""
    pass=()

    fail() {
        echo "error: benchmarks/gpu_check.sh: $*" >&2
        exit 2
    }

    # Relative paths are the caller's, not the checkout's (the script runs from the checkout).
    absolute() {
        case "$1" in /*) echo "$1" ;; *) echo "$here/$1" ;; esac
    }

    while [ $# -gt 0 ]; do
        case "$1" in
            --wheels) [ $# -ge 2 ] || fail "--wheels needs a folder"; wheels=$(absolute "$2"); shift 2 ;;
            --quick) mode=quick; shift ;;
            --cpu-smoke) mode=cpu_smoke; shift ;;
            --budget-s) [ $# -ge 2 ] || fail "--budget-s needs seconds"; budget=$2; shift 2 ;;
            --out) [ $# -ge 2 ] || fail "--out needs a folder"; out=$(absolute "$2"); shift 2 ;;
            --only | --timeout-scale) [ $# -ge 2 ] || fail "$1 needs a value"; pass+=("$1" "$2"); shift 2 ;;
            --keep-work) pass+=("$1"); shift ;;
            -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
            *) fail "unknown option $1 (see bash benchmarks/gpu_check.sh --help)" ;;
        esac
    done

    case "$budget" in
        "") case "$mode" in full) budget=470 ;; quick) budget=260 ;; cpu_smoke) budget=170 ;; esac ;;
        *[!0-9]*) fail "--budget-s must be a whole number of seconds, got '$budget'" ;;
    esac
    if [ "$mode" = cpu_smoke ] && [ -n "$wheels" ]; then
        fail "--cpu-smoke uses the current environment; drop --wheels"
    fi
    command -v "$PY" >/dev/null 2>&1 || fail "no python '$PY' (set PYTHON=...)"
    [ -n "$out" ] && pass+=(--out "$out")

    setup_dir=$(mktemp -d "${TMPDIR:-/tmp}/cxrjax-gpu-check-setup.XXXXXX") || fail "cannot make a temporary folder"
    setup_json=$setup_dir/setup.json
    setup_log=$setup_dir/setup.log
    status=ok
    note=""
    if [ "$mode" != cpu_smoke ]; then
        if [ -n "$wheels" ]; then
            [ -d "$wheels" ] || fail "--wheels $wheels is not a folder (fill it with pip download: benchmarks/README.md)"
            ls "$wheels"/*.whl >/dev/null 2>&1 || fail "--wheels $wheels holds no .whl files (benchmarks/README.md)"
            site=${CXRJAX_GPU_CHECK_SITE:-/tmp/cxrjax-gpu-check-site}
            if "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
                --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl >"$setup_log" 2>&1; then
                note="$(ls "$wheels"/*.whl | wc -l | tr -d ' ') wheels into $site"
            else
                status=failed
                note="pip install of $wheels failed: $(tail -n 1 "$setup_log")"
            fi
            export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
        else
            export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
            note="no --wheels: nothing installed"
        fi
        if [ "$status" = ok ] && ! "$PY" -c "import grain, tensorflow_datasets, array_record, cxrjax.data" >>"$setup_log" 2>&1; then
            status=failed
            note="$note; import grain/tensorflow_datasets/array_record/cxrjax.data failed: $(tail -n 1 "$setup_log")"
        fi
    fi
    elapsed=$(($(date +%s) - start))
    "$PY" - "$setup_json" "$status" "$elapsed" "$note" "$setup_log" <<'EOF'
import json, sys
path, status, seconds, note, log = sys.argv[1:]
try:
    tail = open(log).read()[-2000:]
except OSError:
    tail = ""
json.dump({"status": status, "seconds": float(seconds), "note": note, "log_tail": tail}, open(path, "w"))
EOF
    echo "set-up: $status ($elapsed s) $note"
    left=$((budget - elapsed))
    [ "$left" -gt 0 ] || left=1
    "$PY" -m benchmarks.gpu_check --mode "$mode" --budget-s "$left" --setup-json "$setup_json" "${pass[@]}"
    rc=$?
    rm -rf "$setup_dir"
    exit $rc
}

main "$@"
exit $?
