#!/bin/bash
# Keeps the working tree that a device call carries under its 64 MiB: the tree (about 30 MB, 18 of them the shipped
# translator preset) plus the MiniLM grid's carry (.whl 12 MiB, .data/minilm-f16 44 MiB, .data/tweets-minilm) is
# over it. `slim` takes the preset and the committed results other than KEEP out of the index and ignores them
# (.git/info/exclude, between marker lines), so the call copies only the rest; the files themselves stay where they
# are. `restore` puts exactly those index entries back from HEAD (other staged changes are left alone) and removes
# the marked lines. Run `restore` before committing.
#   bash benchmarks/experiments/device_tree.sh slim benchmarks/results/2026-12-07-gpu-minilm
#   run(..., carry=[".whl", ".data/minilm-f16", ".data/tweets-minilm"])
#   bash benchmarks/experiments/device_tree.sh restore
set -e
cd "$(git rev-parse --show-toplevel)"
EXCLUDE=.git/info/exclude
BEGIN="# device_tree.sh: begin"
END="# device_tree.sh: end"
PATHS="collab_keras/presets/bible_en_de_collaborative benchmarks/results"
case "$1" in
  slim)
    KEEP=${2:?"name the results folder the call needs (it stays in the tree). Received: nothing"}
    [ -d "$KEEP" ] || mkdir -p "$KEEP"
    grep -qF "$BEGIN" $EXCLUDE 2>/dev/null && { echo "already slim: run '$0 restore' first" >&2; exit 1; }
    git rm -r --cached -q $PATHS
    printf '%s\n%s\n%s\n!%s/\n%s\n' "$BEGIN" "collab_keras/presets/bible_en_de_collaborative/" \
      "benchmarks/results/*" "${KEEP%/}" "$END" >> $EXCLUDE
    ;;
  restore)
    git reset -q -- $PATHS
    sed -i "/^$BEGIN\$/,/^$END\$/d" $EXCLUDE
    ;;
  *)
    echo "usage: $0 slim RESULTS_FOLDER | restore. Received: ${1:-nothing}" >&2; exit 2 ;;
esac
echo "the tree a call carries: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked"
