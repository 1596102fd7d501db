# shellcheck shell=bash
# The one list of Debian packages m3dnode needs, sourced by scripts/serve (build list) and
# scripts/test (build and test lists), so that running the node and running the tests cannot
# drift apart again. tests/setup.rs checks this list against the C/C++ code that Cargo.lock
# builds from source (every crate using the `cmake` or `cc` build helpers, the SIMD assembler
# of libjpeg-turbo) and that both scripts source this file.
#
# One entry a line: "<Debian package> <command that succeeds when it is already present>".

# Building m3dnode: the -sys crates compile C/C++ codecs from source: charls-sys (JPEG-LS,
# C++, cmake), turbojpeg-sys (libjpeg-turbo for JPEG Extended 8/12-bit, cmake + nasm for its
# x86 SIMD code, required so that decoding is never silently slow), openjpeg, sqlite and
# meshoptimizer through the `cc` crate.
PREREQS_BUILD=(
    "cmake command -v cmake"
    "make command -v make"
    "g++ command -v g++"
    "nasm command -v nasm"
)

# Running the tests: the real DICOM peers they talk to (DCMTK, dicom3tools, Orthanc and curl
# for its REST API), Python with venv for the ONNX Runtime reference venv, promtool
# (Debian's prometheus) that checks the metrics text, and headless Chromium with its
# WebDriver for the status page's browser test (tests/browser.rs), xmllint that validates the
# audit messages against the DICOM audit schema and openssl's s_server as the TLS syslog
# receiver (tests/audit.rs), shellcheck for scripts/gpu-check (tests/gpu_check.rs), and
# PostgreSQL 15 for the shared index (scripts/pg-cluster runs a throw-away cluster of it;
# install_prereqs keeps Debian from creating and starting its own `main` cluster).
PREREQS_TEST=(
    "dcmtk command -v storescu"
    "dicom3tools command -v dciodvfy"
    "orthanc command -v Orthanc || test -x /usr/sbin/Orthanc"
    "curl command -v curl"
    "python3 command -v python3"
    "python3-venv python3 -c 'import venv, ensurepip'"
    "prometheus command -v promtool"
    "chromium command -v chromium"
    "chromium-driver command -v chromedriver"
    "libxml2-utils command -v xmllint"
    "openssl command -v openssl"
    "shellcheck command -v shellcheck"
    "postgresql-15 test -x /usr/lib/postgresql/15/bin/initdb"
)

# Debian's postgresql-common creates and starts a `main` cluster when a server package is
# installed, a server left running on port 5432 that nothing here uses.
PG_NO_MAIN_CLUSTER=/etc/postgresql-common/createcluster.d/m3dnode.conf

# install_prereqs WHO LIST...: installs with apt-get (through sudo when not root) the packages
# of the named lists whose probe fails; WHO names the calling script in the message.
install_prereqs() {
    local who=$1 list entry pkg probe
    shift
    local need=()
    for list in "$@"; do
        local -n entries="$list"
        for entry in "${entries[@]}"; do
            pkg=${entry%% *}
            probe=${entry#* }
            eval "$probe" >/dev/null 2>&1 || need+=("$pkg")
        done
        unset -n entries
    done
    ((${#need[@]})) || return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "$who: installing ${need[*]}" >&2
    # Before the install: postgresql-common reads createcluster.d when its postinst runs.
    if [[ " ${need[*]} " == *" postgresql-"* ]]; then
        $sudo mkdir -p "${PG_NO_MAIN_CLUSTER%/*}"
        echo "create_main_cluster = false" | $sudo tee "$PG_NO_MAIN_CLUSTER" >/dev/null
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
