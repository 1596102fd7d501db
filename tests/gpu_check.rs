//! scripts/gpu-check where no GPU is: its argument handling, and its refusal without a
//! driver, in seconds and before anything is installed or built (issue 18). The GPU phases
//! themselves run only on a GPU machine, by hand.
//!
//! The script runs with a PATH of its own (a temporary directory holding links to the few
//! tools it uses before the driver check, and a fake `nvidia-smi` where wanted), so the
//! result is the same on a machine that has a driver.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The tools scripts/gpu-check runs before its driver check: `env` finds bash through PATH
/// (the shebang), `timeout` bounds nvidia-smi.
const TOOLS: &[&str] = &["bash", "timeout"];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check")
}

/// Where `name` is on this process's PATH.
fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not on PATH"))
}

/// A directory for PATH holding links to [`TOOLS`] and nothing else.
fn bare_path() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in TOOLS {
        std::os::unix::fs::symlink(which(tool), dir.path().join(tool)).unwrap();
    }
    dir
}

/// A fake `nvidia-smi` in `dir` that runs the shell `body`.
fn fake_nvidia_smi(dir: &Path, body: &str) {
    let path = dir.join("nvidia-smi");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the script with `args` and PATH = `path`, from a scratch directory (it must find
/// the repository by its own location), with the time it took. CARGO_TARGET_DIR points
/// into that directory: nothing may be written there before the driver check.
fn run(path: &Path, args: &[&str]) -> (Output, Duration, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = Command::new(script())
        .args(args)
        .current_dir(scratch.path())
        .env_clear()
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", scratch.path().join("target"))
        .output()
        .unwrap();
    (out, start.elapsed(), scratch)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_nvidia_smi_is_no_driver_in_seconds() {
    let path = bare_path();
    let (out, took, scratch) = run(path.path(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        err.contains("gpu-check: no NVIDIA driver (nvidia-smi not found)"),
        "{err}"
    );
    assert!(
        !scratch.path().join("target").exists(),
        "wrote into the target directory before the driver check"
    );
}

#[test]
fn a_failing_nvidia_smi_is_no_driver() {
    let path = bare_path();
    fake_nvidia_smi(
        path.path(),
        "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2; exit 9",
    );
    let (out, took, scratch) = run(path.path(), &["--skip-build"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        err.contains("gpu-check: no NVIDIA driver (nvidia-smi failed: exit status 9"),
        "{err}"
    );
    assert!(err.contains("could not communicate"), "{err}");
    assert!(!scratch.path().join("target").exists());
}

#[test]
fn a_driver_older_than_cuda_13_stops_before_installing() {
    let path = bare_path();
    fake_nvidia_smi(
        path.path(),
        "echo '| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |'",
    );
    // Links to what the script uses once the driver answered, up to its refusal.
    for tool in ["grep", "head"] {
        std::os::unix::fs::symlink(which(tool), path.path().join(tool)).unwrap();
    }
    let (out, took, scratch) = run(path.path(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!scratch.path().join("target").exists());
    assert!(
        err.contains("supports CUDA 12.4") && err.contains("need CUDA 13"),
        "{err}"
    );
    assert!(!err.contains("== venv"), "went on to install: {err}");
}

#[test]
fn help_exits_zero_with_usage() {
    let path = bare_path();
    for flag in ["--help", "-h"] {
        let (out, _, _) = run(path.path(), &[flag]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", stderr(&out));
        assert!(text.starts_with("usage: scripts/gpu-check"), "{text}");
        for option in [
            "--skip-build",
            "--tensorrt",
            "--no-tensorrt",
            "--steps N",
            "--real-steps N",
            "--venv DIR",
            "--target-dir DIR",
        ] {
            assert!(text.contains(option), "{option} missing from:\n{text}");
        }
    }
}

#[test]
fn bad_arguments_exit_two_with_usage_on_stderr() {
    let path = bare_path();
    // A working fake driver: arguments are refused before it is asked.
    fake_nvidia_smi(path.path(), "echo 'CUDA Version: 13.0'");
    for (args, says) in [
        (&["--frobnicate"][..], "unknown argument '--frobnicate'"),
        (&["--steps"][..], "--steps needs a value"),
        (&["--steps", "0"][..], "positive integer"),
        (&["--steps", "ten"][..], "positive integer"),
        (&["--real-steps"][..], "--real-steps needs a value"),
        (
            &["--real-steps", "0"][..],
            "--real-steps takes a positive integer",
        ),
        (&["--venv"][..], "--venv needs a value"),
    ] {
        let (out, _, _) = run(path.path(), args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.contains("usage: scripts/gpu-check"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: usage goes to stderr");
    }
}

/// The script passes shellcheck (Debian package `shellcheck`, installed by the test set-up).
#[test]
fn script_is_shellcheck_clean() {
    let Ok(out) = Command::new("shellcheck")
        .arg("-x")
        .arg("scripts/gpu-check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    else {
        panic!("shellcheck is not installed (apt-get install shellcheck; scripts/test does)");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
