#!/usr/bin/env bash
# report_cold_seconds: a fresh clone's `make report`, setup included, as a new user meets it: a clone
# of this checkout's commit in a temporary folder, its own virtual environment, and empty caches (the
# persistent compilation cache is the clone's .jax_cache, and XDG_CACHE_HOME points into the clone).
# Writes benchmarks/results/report_cold.json, which `python -m benchmarks` reads back.
#
#   bash benchmarks/report_cold.sh            # minutes; needs the network for `make setup`'s pip
#   KEEP=1 bash benchmarks/report_cold.sh     # keep the clone (its report) for a look
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
commit="$(git -C "$here" rev-parse HEAD)"
work="$(mktemp -d -t lnscope-report-cold-XXXXXX)"
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT
git clone --quiet --no-hardlinks "$here" "$work/lnscope"
git -C "$work/lnscope" checkout --quiet "$commit"
cd "$work/lnscope"
export XDG_CACHE_HOME="$work/cache"
unset JAX_COMPILATION_CACHE_DIR LNSCOPE_COMPILATION_CACHE
start=$(date +%s.%N)
make setup >"$work/setup.log" 2>&1
setup_done=$(date +%s.%N)
make report >"$work/report.log" 2>&1
end=$(date +%s.%N)
mkdir -p "$here/benchmarks/results"
python3 - "$here/benchmarks/results/report_cold.json" "$start" "$setup_done" "$end" "$commit" <<'EOF'
import json, os, sys, tempfile
path, start, setup_done, end, commit = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5]
result = {"seconds": end - start, "setup_s": setup_done - start, "report_s": end - setup_done,
          "commit": commit, "nproc": os.cpu_count(), "load": os.getloadavg()[0]}
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
with os.fdopen(fd, "w") as f:
    json.dump(result, f, indent=2)
os.replace(tmp, path)
print(json.dumps(result))
EOF
