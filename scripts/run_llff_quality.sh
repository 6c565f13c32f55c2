#!/usr/bin/env bash
# The LLFF quality tables on the GPU machine: scripts/compare.py (the given methods, one schedule, the compact
# prior) on every scene given, all scenes at once and each scene's methods side by side (--jobs = the number of
# methods) after its warm-up, under CUDA MPS. One training process keeps the H100 ~9% busy: LR warm-up on fern made 67 it/s alone;
# three at once made 54 it/s each without MPS (OMP_NUM_THREADS=2; 22 each with every core per process) and
# 73-76 it/s each under MPS. Runs detached, so that device calls of at most 10 minutes can poll it:
#
#   bash scripts/run_llff_quality.sh start WORK N0 M "METHODS" SCENE_DIR...   # returns at once; WORK/<scene>.log
#   COMPARE_ARGS="--v2-model-path DIR" bash scripts/run_llff_quality.sh start ...   # more compare.py options
#   COMPARE_ARGS="--stop-after-warmup" ...; later, on another machine, COMPARE_ARGS="--warmup-run DIR" ...   # a job
#                                     # split at the warm-up across device sessions (DIR: WORK/<scene>/runs/<scene>/
#                                     # 3dsr/warm-up, brought back by collect-warmup below and carried in again
#                                     # with scripts/carry.py: collect leaves runs/ out)
#   ISOLATED=1 bash scripts/run_llff_quality.sh start ...   # timings: one training process on the GPU at a time
#                                     # (compare.py --jobs 1 --separate-processes: each method in a fresh process,
#                                     # one after another; the scenes one after another, no MPS)
#   WAIT_FOR=OTHER_WORK/all.done bash scripts/run_llff_quality.sh start ...   # begin once another job has ended
#
# A scene folder may appear only later (carried by a later device call): its job waits for <scene>/split.json.
# The job runs a snapshot of the code, WORK/code (scripts/, threedsr_ns/, pyproject.toml, first on PYTHONPATH): each
# device call re-copies the working tree, and a process (or a spawned worker) that starts meanwhile would find no
# scripts/compare.py.
# Weights the machine lacks are found through THREEDSR_METRIC_WEIGHTS / THREEDSR_REALESRGAN_WEIGHTS (exported by
# scripts/export_metric_weights.py and python -m threedsr_ns.backends.realesrgan export).
#   bash scripts/run_llff_quality.sh status WORK                    # tail of each log; "N of M scene(s) done"
#   bash scripts/run_llff_quality.sh wait WORK MAX_S                # until WORK/all.done, at most MAX_S seconds
#   bash scripts/run_llff_quality.sh collect WORK OUT               # one <scene>.tar.gz per started scene into OUT
#   bash scripts/run_llff_quality.sh stop WORK                      # end the job and every process it started
#   bash scripts/run_llff_quality.sh collect-warmup WORK OUT FIRST COUNT   # pieces FIRST.. of the warm-ups, into OUT
#   bash scripts/run_llff_quality.sh join-warmup PIECES DEST        # on the next machine: DEST/<scene>/warm-up
# Data, weights and a warm-up go in over several device calls as units of scripts/carry.py (each under the 64 MiB a
# call carries beside the checkout); e.g. join-warmup here, `python scripts/carry.py pack DEST/fern/warm-up
# .data/carry --name wu`, then one call per unit: `python3 scripts/carry.py unpack .data/carry/wu.NN
# /root/wu/fern/warm-up` (the folder appears once whole).
# collect-warmup packs each scene's finished warm-up (config.yml, warmup.json, its last checkpoint: ~90 MB at fern's
# N0=30000) once, in pieces of WARMUP_PIECE_BYTES (default 15000000) under WORK/warm-up-pieces, with an md5 of the
# whole, and copies COUNT of them from the FIRST (0-based, over all scenes in order; md5 files come with each call)
# into OUT; it says how many are left. Four pieces fit the 64 MiB that one device call brings back, so a warm-up
# comes back over two calls while the methods train, and a job the session's GPU time cannot finish can go on in
# the next session from join-warmup's DEST/<scene>/warm-up (COMPARE_ARGS="--warmup-run ...").
# stop ends the job's whole process session (start runs it under setsid; WORK/job.pid), the methods' spawned
# training processes too: `pkill -f compare.py` leaves a compare.py --separate-processes worker running (a
# multiprocessing spawn child, whose command line names no script), which then shares the GPU with the next job
# (the 2026-12-04 session's lost bicubic baseline).
# status, wait, collect and stop exit 3 at once when WORK is not on this machine (a device call after a pause finds a
# fresh machine: the job is gone, and waiting would only spend device time).
#
# Each tarball holds compare.json/.md, crops.png, each method's evaluate_<method>/metrics.json/.md, the 3dsr
# run's contact sheets, the log and log-excerpt.txt (its guidance-step timings and detail energies, run starts, tables
# and errors, to commit beside the results) but not the checkpoints or the per-view SR targets: the device returns 8
# files of 16 MiB. A tarball over COLLECT_MAX_BYTES (default 15 MiB) is made again without its pictures and the full
# log (compare.json, the metrics and log-excerpt.txt stay), and collect says so: the 2026-12-04 session's 20 MB fern
# tarball (2016x1512 contact sheets) did not come back.
set -euo pipefail
cmd=$1 work=$2
shift 2
case "$cmd" in  # these read a job's folder; on a fresh machine, say so at once (exit 3; see above)
  status|wait|collect|stop|collect-warmup)
    [ -f "$work/scenes.txt" ] || { echo "$work: no job on this machine (a fresh one?)" >&2; exit 3; } ;;
esac
case "$cmd" in
  start)
    warmup=$1 phase=$2 methods=$3
    jobs=$(wc -w <<< "$methods") background="&" separate=""
    [ -n "${ISOLATED:-}" ] && jobs=1 background="" separate="--separate-processes"  # the scenes in sequence, each
    # method alone in a fresh process
    shift 3
    work=$(realpath -m "$work")
    code="$work/code" repo=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$work"
    rm -rf "$code" && mkdir "$code" && cp -r "$repo/scripts" "$repo/threedsr_ns" "$repo/pyproject.toml" "$code/"
    echo "$#" > "$work/scenes.txt"
    job="cd '$code'; export PYTHONPATH='$code'\${PYTHONPATH:+:\$PYTHONPATH}
      until [ -z '${WAIT_FOR:-}' ] || [ -f '${WAIT_FOR:-}' ]; do sleep 5; done"
    for data in "$@"; do
      data=$(realpath -m "$data") scene=$(basename "$data")
      job+="
        (until [ -f '$data/split.json' ]; do sleep 5; done
        start=\$(date +%s)
        python3 scripts/compare.py --data '$data' --out '$work/$scene' --backend compact --jobs $jobs --crop 256 \
          --warmup-iters $warmup --phase-iters $phase --methods $methods $separate ${COMPARE_ARGS:-} > '$work/$scene.log' 2>&1
        run=\$(dirname \$(find '$work/$scene/runs' -path '*/3dsr/config.yml' | head -1))
        [ -f \$run/config.yml ] && cp \$run/contact_sheet_*.png '$work/$scene/'
        echo \"scene $scene done in \$(( \$(date +%s) - start )) s\" >> '$work/$scene.log'
        touch '$work/$scene.done') $background"
    done
    job+="
      wait
      touch '$work/all.done'"
    # MPS lets the processes' kernels share the GPU instead of time-slicing it; without it they still run
    [ -z "${ISOLATED:-}" ] && command -v nvidia-cuda-mps-control > /dev/null && nvidia-cuda-mps-control -d \
      && echo "CUDA MPS started"
    export OMP_NUM_THREADS=1  # up to 10 training processes on 16 cores
    [ -n "${ISOLATED:-}" ] && export OMP_NUM_THREADS=8
    setsid nohup bash -c "$job" > "$work/job.txt" 2>&1 < /dev/null &
    echo $! > "$work/job.pid"  # a background child of this non-interactive shell is no group leader, so setsid
    # makes it a session leader in place: its pid is the job's session id
    echo "started $# scene(s) under $work"
    ;;
  status)
    for log in "$work"/*.log; do
      echo "== $log"; tail -c 600 "$log" | tr '\r' '\n' | tail -4
    done
    echo "$(ls "$work"/*.done 2>/dev/null | grep -vc '/all.done$') of $(cat "$work/scenes.txt") scene(s) done"
    ;;
  wait)
    max=$1 begin=$(date +%s)
    while [ ! -f "$work/all.done" ] && [ $(( $(date +%s) - begin )) -lt "$max" ]; do sleep 5; done
    [ -f "$work/all.done" ] && echo "all.done after $(( $(date +%s) - begin )) s" || echo "not done after $max s"
    ;;
  collect)
    out=$1 max_bytes=${COLLECT_MAX_BYTES:-15728640}
    for log in "$work"/*.log; do
      scene=$(basename "$log" .log)
      [ -d "$work/$scene" ] || continue
      # unfinished scenes too: compare.py rewrites its table after each method, so a cut-short job keeps them
      [ -f "$work/$scene.done" ] || echo "$scene: not finished; its compare.json holds the methods scored so far"
      cp "$log" "$work/$scene/"
      # rich wraps a long record onto lines of its own, indented, without the file:line column: join them back
      tr '\r' '\n' < "$log" | sed 's/\x1b\[[0-9;]*m//g' | awk '
        function flush() { if (msg != "") print msg (src != "" ? "  " src : ""); msg = src = "" }
        /^ +[^ ]/ && !/\.py:[0-9]+ *$/ && src != "" { sub(/^ +/, ""); sub(/ +$/, ""); msg = msg " " $0; next }
        { flush(); if (match($0, / +[A-Za-z_0-9.]+\.py:[0-9]+ *$/)) { msg = substr($0, 1, RSTART - 1)
            src = substr($0, RSTART); gsub(/^ +| +$/, "", src) } else msg = $0 }
        END { flush() }' | grep -v "SyntaxWarning\|Step (% Done)\|^\s*$\|(.*%) " \
        | grep -E "denoise step|detail energy|done in|Saving config|Done loading Nerf|[Ee]rror|^\| |pre-flight" | cut -c1-220 \
        > "$work/$scene/log-excerpt.txt" || true
      pack() { tar -czf "$out/$scene.tar.gz" -C "$work" --exclude="$scene/runs" --exclude="$scene/shared_geometry.pt" \
        "$@" "$scene"; }
      pack
      if [ "$(stat -c %s "$out/$scene.tar.gz")" -gt "$max_bytes" ]; then
        pack --exclude="*.png" --exclude="$scene/$scene.log"
        echo "$scene: over $max_bytes bytes with its pictures; collected without them and the full log"
      fi
    done
    ls -la "$out"
    ;;
  stop)
    [ -f "$work/job.pid" ] || { echo "$work: no job.pid (a job started before stop existed?)" >&2; exit 3; }
    sid=$(cat "$work/job.pid")
    pkill -TERM -s "$sid" 2> /dev/null || true
    for _ in $(seq 20); do pgrep -s "$sid" > /dev/null || break; sleep 0.5; done
    pkill -KILL -s "$sid" 2> /dev/null || true
    sleep 0.5
    pgrep -s "$sid" > /dev/null && { echo "$work: processes of session $sid still running" >&2; exit 1; }
    echo "stopped the job of $work (session $sid)"
    ;;
  collect-warmup)
    out=$1 first=$2 count=$3 pieces="$work/warm-up-pieces"
    mkdir -p "$pieces"
    for log in "$work"/*.log; do
      scene=$(basename "$log" .log)
      [ -f "$pieces/$scene.md5" ] && continue  # packed by an earlier call
      cost=$(find "$work/$scene/runs" -path "*/warm-up/warmup.json" 2> /dev/null | head -1 || true)
      [ -n "$cost" ] || { echo "$scene: its warm-up has not finished"; continue; }
      run=$(dirname "$cost")
      ckpt=$(ls "$run"/nerfstudio_models/step-*.ckpt | sort | tail -1)
      tar -cf "$pieces/$scene.tar" -C "$(dirname "$run")" "warm-up/config.yml" "warm-up/warmup.json" \
        "warm-up/nerfstudio_models/$(basename "$ckpt")"
      split -b "${WARMUP_PIECE_BYTES:-15000000}" -a 3 -d "$pieces/$scene.tar" "$pieces/$scene.tar.piece."
      (cd "$pieces" && md5sum "$scene.tar" > "$scene.md5" && rm "$scene.tar")
    done
    all=($(cd "$pieces" && ls | grep '\.tar\.piece\.' | sort || true))
    for piece in "${all[@]:$first:$count}"; do cp "$pieces/$piece" "$out/"; done
    cp "$pieces"/*.md5 "$out/" 2> /dev/null || true
    left=$(( ${#all[@]} - first - count )); [ "$left" -lt 0 ] && left=0
    echo "warm-up pieces $first..$(( first + count - 1 )) of ${#all[@]} copied; $left left"
    ;;
  join-warmup)
    work=$(realpath "$work") dest=$(realpath -m "$1")
    for sum in "$work"/*.md5; do
      scene=$(basename "$sum" .md5)
      mkdir -p "$dest"
      cat "$work/$scene.tar.piece."* > "$dest/$scene.tar"
      (cd "$dest" && md5sum -c --quiet "$sum") || { echo "$scene: pieces missing or damaged ($sum)" >&2; exit 1; }
      mkdir -p "$dest/$scene" && tar -xf "$dest/$scene.tar" -C "$dest/$scene" && rm "$dest/$scene.tar"
      echo "$scene: $dest/$scene/warm-up (for COMPARE_ARGS=\"--warmup-run $dest/$scene/warm-up\")"
    done
    ;;
  *) echo "usage: $0 start|status|wait|collect|stop|collect-warmup|join-warmup WORK ..." >&2; exit 2 ;;
esac
