# Shared steps of run.sh and run_three_tower.sh (sourced, not run).
#
# [PEERS_OPTIONAL="PKG..."] peers_run LABEL "IMPORTS" "PIP PACKAGES" EXAMPLE SCRIPT [OUT_DIR [SCRIPT ARGS...]]
#   1. make/reuse the venv <repo>/target/peers-venv; pip-install PACKAGES
#      unless `import IMPORTS` already works; then each optional package of
#      PEERS_OPTIONAL (import name = pip name) unless it imports: one that
#      fails to install prints a message and the run goes on (SCRIPT skips
#      the peers that need it)
#   2. unless SKIP_RUST=1: cargo run --release --example EXAMPLE -- --out OUT $PEER_ARGS
#   3. run SCRIPT OUT SCRIPT_ARGS... with the venv's python
peers_run() {
    local label="$1" imports="$2" packages="$3" example="$4" script="$5"
    local script_dir repo_root out venv py
    script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    # The repo root is two levels above this file (benches/peers/).
    repo_root="$(cd "$script_dir/../.." && pwd)"
    out="${6:-$repo_root/target/peers}"
    shift $(($# < 6 ? $# : 6))   # what is left goes to SCRIPT
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"   # absolute, since cargo runs from the repo root
    venv="$repo_root/target/peers-venv"
    py="$venv/bin/python"

    if [[ ! -x "$py" ]]; then
        echo "$label: creating venv at $venv" >&2
        python3 -m venv "$venv"
    fi
    if ! "$py" -c "import $imports" >/dev/null 2>&1; then
        echo "$label: installing $packages into $venv" >&2
        # shellcheck disable=SC2086
        "$py" -m pip install --quiet --disable-pip-version-check $packages
    fi
    local pkg
    # shellcheck disable=SC2086
    for pkg in ${PEERS_OPTIONAL:-}; do
        if ! "$py" -c "import $pkg" >/dev/null 2>&1; then
            echo "$label: installing optional $pkg into $venv" >&2
            if ! "$py" -m pip install --quiet --disable-pip-version-check "$pkg"; then
                echo "$label: could not install $pkg (see pip's message above); the peers that need it will be skipped" >&2
            fi
        fi
    done

    if [[ "${SKIP_RUST:-0}" == "1" ]]; then
        echo "$label: SKIP_RUST=1, reusing data in $out" >&2
    else
        # PEER_ARGS is split on whitespace on purpose (it holds several flags).
        # shellcheck disable=SC2086
        (cd "$repo_root" && cargo run --release --example "$example" -- --out "$out" ${PEER_ARGS:-})
    fi

    "$py" "$script_dir/$script" "$out" "$@"
}
