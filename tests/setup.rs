//! The set-up commands of the README: `scripts/serve` and `scripts/test` install their
//! prerequisites from ONE list (scripts/prereqs.sh), and that list matches what the build and
//! the tests need, so that the first command on a fresh machine cannot break again the way
//! `cargo run --release -- serve` did (charls-sys needed cmake, which only scripts/test
//! installed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, text};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Entries ("<package> <probe>") of one list, read by bash itself from scripts/prereqs.sh.
fn list(name: &str) -> Vec<(String, String)> {
    let out = run(Command::new("bash")
        .current_dir(root())
        .arg("-c")
        .arg(format!(
            "set -eu; . scripts/prereqs.sh; printf '%s\\n' \"${{{name}[@]}}\""
        )));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (pkg, probe) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("{name}: entry without a probe: {l:?}"));
            (pkg.to_string(), probe.to_string())
        })
        .collect()
}

fn packages(name: &str) -> BTreeSet<String> {
    list(name).into_iter().map(|(p, _)| p).collect()
}

/// Crate name -> names of its dependencies, for every package of Cargo.lock (all features of
/// this crate, so optional GPU back-ends count too).
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock: toml::Value = toml::from_str(&read("Cargo.lock")).expect("Cargo.lock parses");
    let mut graph = BTreeMap::new();
    for p in lock["package"].as_array().expect("[[package]]") {
        let name = p["name"].as_str().unwrap().to_string();
        let deps: Vec<String> = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    // "name" or "name version" when several versions are locked.
                    .map(|s| s.as_str().unwrap().split(' ').next().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        graph.entry(name).or_insert_with(Vec::new).extend(deps);
    }
    graph
}

/// Crates that depend on `pkg-config` only to look for a system copy first and build their
/// bundled sources when there is none (or only under GPU/windowing features this node does
/// not build by default). A new `pkg-config` user must be judged and added here, or its
/// Debian package added to the build list.
const PKG_CONFIG_WITH_FALLBACK: &[&str] = &[
    "bzip2-sys",
    "khronos-egl",
    "liblzma-sys",
    "libsqlite3-sys",
    "onig_sys",
    "wayland-sys",
    "zstd-sys",
];

/// Crates that assemble SIMD code with nasm when built from source.
const NASM_CRATES: &[&str] = &["turbojpeg-sys", "mozjpeg-sys", "nasm-rs"];

/// The Debian packages the build needs, derived from Cargo.lock, with the crates that need
/// each (for the failure message).
fn build_needs() -> BTreeMap<&'static str, BTreeSet<String>> {
    let graph = lock_graph();
    let mut need: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for (name, deps) in &graph {
        let has = |d: &str| deps.iter().any(|x| x == d);
        if has("cmake") {
            // The cmake crate runs cmake with its default Unix Makefiles generator; the
            // C++ codecs (charls) need a C++ compiler.
            for pkg in ["cmake", "make", "g++"] {
                need.entry(pkg).or_default().insert(name.clone());
            }
        }
        if has("cc") {
            // g++ brings gcc: the cc crate compiles C and C++.
            need.entry("g++").or_default().insert(name.clone());
        }
        if NASM_CRATES.contains(&name.as_str()) || has("nasm-rs") {
            need.entry("nasm").or_default().insert(name.clone());
        }
        if has("pkg-config") && !PKG_CONFIG_WITH_FALLBACK.contains(&name.as_str()) {
            need.entry("pkg-config").or_default().insert(name.clone());
        }
    }
    need
}

#[test]
fn build_prerequisites_match_the_crates_built_from_source() {
    let need = build_needs();
    assert!(
        need.contains_key("cmake") && need.contains_key("nasm"),
        "the lock file analysis found no cmake/nasm users: {need:?}"
    );
    let have = packages("PREREQS_BUILD");
    let missing: Vec<String> = need
        .iter()
        .filter(|(pkg, _)| !have.contains(**pkg))
        .map(|(pkg, crates)| format!("{pkg} (needed by {crates:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "scripts/prereqs.sh PREREQS_BUILD lacks {missing:?}: `scripts/serve` would fail to \
         build on a fresh machine"
    );
    let unneeded: Vec<&String> = have
        .iter()
        .filter(|p| !need.contains_key(p.as_str()))
        .collect();
    assert!(
        unneeded.is_empty(),
        "PREREQS_BUILD has {unneeded:?}, which no crate of Cargo.lock needs (a test-only \
         package belongs in PREREQS_TEST): {need:?}"
    );
}

#[test]
fn every_prerequisite_probe_passes_on_this_machine() {
    // A probe that fails even with its package installed (a typo, a renamed binary) would make
    // both scripts run apt-get at every start.
    for name in ["PREREQS_BUILD", "PREREQS_TEST"] {
        for (pkg, probe) in list(name) {
            let out = run(Command::new("bash").arg("-c").arg(&probe));
            assert!(
                out.status.success(),
                "{name}: the probe of {pkg} (`{probe}`) fails; is {pkg} installed (scripts/test \
                 installs it)? {}",
                text(&out)
            );
        }
    }
}

/// Lines that are commands (not comments) of a shell script.
fn commands(script: &str) -> Vec<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn serve_and_test_install_from_the_one_list() {
    for (script, lists) in [
        ("scripts/serve", "PREREQS_BUILD"),
        ("scripts/test", "PREREQS_BUILD PREREQS_TEST"),
    ] {
        let cmds = commands(&read(script));
        assert!(
            cmds.iter().any(|c| c == ". scripts/prereqs.sh"),
            "{script} does not source scripts/prereqs.sh"
        );
        let install = format!("install_prereqs {script} {lists}");
        assert!(cmds.contains(&install), "{script} does not run `{install}`");
        // Installing anything else on the side is how the two commands drifted apart.
        for c in &cmds {
            assert!(
                !c.contains("apt-get") && !c.contains("need+="),
                "{script} installs packages outside scripts/prereqs.sh: {c}"
            );
        }
    }
    let serve = commands(&read("scripts/serve"));
    assert_eq!(
        serve.last().map(String::as_str),
        Some("exec cargo run --release -- serve \"$@\""),
        "scripts/serve must end by running the node"
    );
    assert!(
        commands(&read(".ci/run")).contains(&"exec scripts/test".to_string()),
        "CI must run the README's test command"
    );
    // The image builds from the same list (it once lacked what a new codec needed).
    let dockerfile = read("docker/Dockerfile");
    assert!(
        dockerfile.contains(". scripts/prereqs.sh && install_prereqs docker PREREQS_BUILD"),
        "docker/Dockerfile must install its build packages from scripts/prereqs.sh"
    );
    assert!(
        !dockerfile.contains("apt-get install"),
        "docker/Dockerfile installs packages outside scripts/prereqs.sh"
    );
    // The two lists do not overlap: a package is either needed to build or only to test.
    let build = packages("PREREQS_BUILD");
    let test = packages("PREREQS_TEST");
    assert!(build.is_disjoint(&test), "{build:?} / {test:?}");
}

#[test]
fn readme_set_up_commands_are_the_scripts() {
    let readme = read("README.md");
    let start = readme
        .find("## Set-up")
        .expect("README has a Set-up section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let section = &section[..end];
    // The first two sh code blocks are the two set-up commands.
    let blocks: Vec<Vec<String>> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| commands(b.split("```").next().unwrap()))
        .collect();
    assert!(blocks.len() >= 2, "{section}");
    assert_eq!(
        [&blocks[0][..], &blocks[1][..]],
        [["scripts/serve"], ["scripts/test"]],
        "the README's set-up commands"
    );
    for c in ["scripts/serve", "scripts/test"] {
        let mode = std::fs::metadata(root().join(c))
            .unwrap_or_else(|e| panic!("{c}: {e}"))
            .permissions();
        assert!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111 != 0,
            "{c} is not executable"
        );
    }
    // `cargo run ... serve` and `cargo test` bypass the prerequisites: no code block of the
    // section (commands, config comments) offers them.
    for block in section.split("```").skip(1).step_by(2) {
        for line in block.lines() {
            assert!(
                !line.contains("cargo run --release -- serve") && !line.contains("cargo test"),
                "the Set-up section offers `{line}`, which fails on a fresh machine"
            );
        }
    }
}

#[test]
fn test_prerequisites_cover_every_tool_the_tests_run() {
    // Every tool the tests look up with `common::tool` comes from a package of the test list.
    let test_pkgs = packages("PREREQS_TEST");
    let mut tools = BTreeSet::new();
    let dir = root().join("tests");
    let mut files = vec![dir.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if p.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&p).unwrap();
            for part in src.split("tool(\"").skip(1) {
                if let Some(name) = part.split('"').next() {
                    tools.insert(name.to_string());
                }
            }
        }
    }
    assert!(tools.contains("storescu"), "{tools:?}");
    for t in &tools {
        let path = common::tool(t);
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let out = run(Command::new("dpkg").arg("-S").arg(&path));
        let owner = text(&out);
        let pkg = owner.split(':').next().unwrap_or_default().trim();
        assert!(
            out.status.success() && test_pkgs.contains(pkg),
            "the tests run `{t}` ({}), from package {pkg:?}, which PREREQS_TEST lacks: \
             {owner}",
            Path::new(&path).display()
        );
    }
}

#[test]
fn postgresql_is_installed_without_debians_main_cluster() {
    // The tests run their own throw-away PostgreSQL cluster (scripts/pg-cluster); the package
    // must not leave one of its own running. Installing it through install_prereqs, with
    // apt-get and sudo replaced by recorders, shows the createcluster.d file in place with
    // `create_main_cluster = false` when apt-get install runs (postgresql-common's postinst
    // reads it then).
    assert!(
        packages("PREREQS_TEST").contains("postgresql-15"),
        "PREREQS_TEST lacks postgresql-15"
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("createcluster.d/m3dnode.conf");
    let log = tmp.path().join("apt.log");
    let script = r#"
        set -eu
        . scripts/prereqs.sh
        PG_NO_MAIN_CLUSTER=$1
        LOG=$2
        sudo() { "$@"; }
        apt-get() {
            if [ "$1" = install ]; then
                printf '%s | conf: %s\n' "$*" "$(cat "$PG_NO_MAIN_CLUSTER" 2>/dev/null)" >>"$LOG"
            fi
        }
        PG_ONLY=("postgresql-15 false")
        install_prereqs setup-test PG_ONLY
    "#;
    let out = run(Command::new("bash")
        .current_dir(root())
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(&conf)
        .arg(&log));
    assert!(out.status.success(), "{}", text(&out));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("install") && logged.contains("postgresql-15"),
        "apt-get install was not run for postgresql-15: {logged:?}"
    );
    assert!(
        logged.contains("| conf: create_main_cluster = false"),
        "createcluster.d was not written before apt-get install: {logged:?}"
    );
}
