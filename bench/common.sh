# Helpers the bench scripts source: `say` (a line to the log and stderr) and `run` (a command, its output to the
# log, a failure reported without ending the script). The sourcing script sets `log`.

say() { echo "== $*" | tee -a "$log" >&2; }

# run LABEL CMD...: run a command, its output to the log; fails the step, not the script.
run() {
    local label="$1"; shift
    say "$label: $*"
    "$@" >>"$log" 2>&1 || { say "$label FAILED (exit $?)"; return 1; }
}
