//! The generated model at Wonder3D's UNet shapes (scripts/make_wonder3d_shaped_model.py,
//! issue 18) builds and runs a denoising step on the CPU through `m3dnode views`.
//!
//! In the suite: the same graph at reduced width (`--reduced`: channels 32/64/64/64, one
//! attention head, 19 MB; about 20 s and 2.5 GB here): the generator's layer sizes against
//! its formula, the batch structure of the multi-view and cross-domain attention (which items
//! a change of item 0 reaches, through Python's onnxruntime), and a guided step through the
//! pipeline with the weights as ONNX external data.
//!
//! The full-size model is ignored in the suite: it writes 3.6 GB of weights and, measured on
//! the project's 2-vCPU machine with other builds running, takes 85-92 s (20-30 s to
//! generate, 8 s to open the sessions, 35-45 s for the one UNet step at batch 12) and 8.8 GB
//! of memory (m3dnode's peak RSS: ONNX Runtime materialises the multi-view attention's
//! scores, [12, 8, 1024, 6144] floats, like the real export would). Run it with
//!
//!     cargo test --test wonder3d_shaped -- --ignored
//!
//! with ORT_DYLIB_PATH and M3DNODE_PYTHON set as for tests/mvdiffusion.rs (the venv's python
//! needs onnx and numpy).

use std::path::{Path, PathBuf};
use std::process::Command;

fn library() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "ORT_DYLIB_PATH is not set: point it at libonnxruntime.so.1.31.1 (scripts/test \
             installs onnxruntime==1.31.1 into target/pyenv)"
        ),
    }
}

/// The venv's python (onnx, numpy): M3DNODE_PYTHON, else next to the library
/// (…/lib/python3.X/site-packages/onnxruntime/capi/).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("M3DNODE_PYTHON") {
        return PathBuf::from(p);
    }
    library()
        .ancestors()
        .nth(6)
        .expect("venv layout")
        .join("bin/python")
}

/// `NAME: VALUE` from the generator's output, as an integer.
fn figure(out: &str, name: &str) -> u64 {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no `{name}:` line in:\n{out}"));
    line.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("`{name}: {line}` is not a count"))
}

/// Runs the generator into `dir` with `args`; its standard output.
fn generate(dir: &Path, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(root.join("scripts/make_wonder3d_shaped_model.py"))
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `m3dnode views` on `model`, one step at guidance `g`, on the CPU, with the views saved in
/// `dir/views` and the tensors recorded in `dir/record`: (stdout, stderr).
fn views_step(model: &Path, dir: &Path, g: &str) -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .arg("views")
        .arg(root.join("testdata/series/ct_head_axial_small"))
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--window", "ct-bone"])
        .args(["--steps", "1", "--guidance", g])
        .arg("--save-views")
        .arg(dir.join("views"))
        .arg("--record")
        .arg(dir.join("record"))
        .env("ORT_DYLIB_PATH", library())
        .env("RUST_LOG", "m3dnode=info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The recorded latents after the step and the decoded images: the model's shapes, finite
/// values, and latents moved away from the initial noise (the UNet's output went into them).
fn check_record(record: &Path) {
    let (shape, initial) = read_npy(&record.join("initial_noise.npy"));
    assert_eq!(shape, [12, 4, 32, 32]);
    let (shape, latents) = read_npy(&record.join("final_latents.npy"));
    assert_eq!(shape, [12, 4, 32, 32]);
    assert!(latents.iter().all(|v| v.is_finite()), "non-finite latents");
    let moved = initial
        .iter()
        .zip(&latents)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the step left the latents unchanged ({moved})"
    );
    let (shape, images) = read_npy(&record.join("images.npy"));
    assert_eq!(shape, [12, 3, 256, 256]);
    assert!(
        images
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
    );
}

/// The PNGs `--save-views` writes: three maps per view and Wonder3D's normals file, 256 px.
fn check_views(views: &Path) {
    for view in [
        "front",
        "front_right",
        "right",
        "back",
        "left",
        "front_left",
    ] {
        for name in [
            format!("{view}_normal.png"),
            format!("{view}_colour.png"),
            format!("{view}_mask.png"),
            format!("normals_000_{view}.png"),
        ] {
            let bytes = std::fs::read(views.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
            // IHDR: width and height, big-endian, at bytes 16..24
            let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
            let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
            assert_eq!((w, h), (256, 256), "{name}");
        }
    }
}

/// Which batch items of `unet_b{n}.onnx`'s output change when item 0 of `sample` does.
fn reached_by_item_0(model: &Path, n: usize) -> Vec<usize> {
    let script = r#"
import sys
import numpy as np, onnxruntime as ort
path, n = sys.argv[1], int(sys.argv[2])
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feed = {"sample": rng.standard_normal((n, 8, 32, 32), dtype=np.float32),
        "timestep": np.array([500], np.int64),
        "encoder_hidden_states": rng.standard_normal((n, 1, 768), dtype=np.float32),
        "class_labels": rng.standard_normal((n, 10), dtype=np.float32)}
a = s.run(None, feed)[0]
feed["sample"][0] += 1.0
d = np.abs(s.run(None, feed)[0] - a).reshape(n, -1).max(axis=1)
assert np.isfinite(a).all()
print(" ".join(str(i) for i in range(n) if d[i] > 1e-6))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(model.join(format!("unet_b{n}.onnx")))
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|i| i.parse().unwrap())
        .collect()
}

#[test]
fn reduced_model_has_the_formula_sizes_and_the_batch_structure_and_runs_guided() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let model = scratch.path().join("model");
    let stdout = generate(&model, &["--reduced"]);
    let params = figure(&stdout, "unet parameters");
    // the graph's initializers, summed, against the formula at the same sizes
    assert_eq!(params, figure(&stdout, "formula parameters"), "{stdout}");
    assert!((4_000_000..6_000_000).contains(&params), "{stdout}");
    assert_eq!(figure(&stdout, "real parameters"), 910_785_284, "{stdout}");
    assert!(stdout.contains("reduced (--reduced)"), "{stdout}");
    assert!(
        std::fs::metadata(model.join("unet_weights.bin"))
            .unwrap()
            .len()
            > 16 << 20
    );

    // Batch 24 is [normal-uncond, normal-cond, colour-uncond, colour-cond], six views each:
    // the multi-view attention reaches item 0's block (0-5), the cross-domain attention its
    // partner in the colour half (12) and that one's block (12-17); the conditional branch
    // (6-11, 18-23) stays untouched. At batch 12 ([normal, colour]) that is everything.
    let mut guided: Vec<usize> = (0..6).collect();
    guided.extend(12..18);
    assert_eq!(reached_by_item_0(&model, 24), guided);
    assert_eq!(reached_by_item_0(&model, 12), (0..12).collect::<Vec<_>>());

    // one guided step through the pipeline (UNet batch 24, weights as external data)
    let (stdout, stderr) = views_step(&model, scratch.path(), "3");
    assert!(
        stdout.contains("wonder3d-shaped-reduced-test")
            && stdout.contains("1 steps, UNet batch 24, on CPUExecutionProvider"),
        "{stdout}"
    );
    assert!(
        stderr.contains("provider=CPUExecutionProvider") && stderr.contains("batch=24"),
        "{stderr}"
    );
    check_record(&scratch.path().join("record"));
    check_views(&scratch.path().join("views"));
}

/// An .npy file of float32 (little-endian, C order): its shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no shape in {header}"));
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    let values = bytes[10 + len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (shape, values)
}

#[test]
#[ignore = "3.6 GB of weights, 1.5 min and 9 GB of memory: cargo test --test wonder3d_shaped -- --ignored"]
fn wonder3d_shaped_model_builds_and_runs_a_step_on_cpu() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let model = scratch.path().join("model");

    // 1. generate: batch 12 only (no guidance), one UNet session to open
    let stdout = generate(&model, &["--batches", "12"]);
    let params = figure(&stdout, "unet parameters");
    let real = figure(&stdout, "real parameters");
    assert_eq!(params, figure(&stdout, "formula parameters"), "{stdout}");
    // Wonder3D's UNet: the SD 1.x UNet (859,520,964) plus the 8-channel conv_in, the class
    // embedding and a cross-domain attention per transformer block.
    assert!(
        (900_000_000..920_000_000).contains(&real),
        "real count {real}"
    );
    assert!(
        stdout.contains("SD 1.x UNet 859520964"),
        "the formula's check figure is missing:\n{stdout}"
    );
    assert!(
        params.abs_diff(real) * 10 <= real,
        "generated {params} is not within 10% of the real {real}"
    );
    // The weights are external data: the graph file is small, the data file holds them all.
    let graph = std::fs::metadata(model.join("unet_b12.onnx"))
        .unwrap()
        .len();
    let data = std::fs::metadata(model.join("unet_weights.bin"))
        .unwrap()
        .len();
    assert!(graph < 16 << 20, "unet_b12.onnx is {graph} bytes");
    // (norms and biases, under 1% of the parameters, stay inside the graph)
    assert!(
        data >= params * 4 / 100 * 99 && data <= params * 4 + (64 << 20),
        "unet_weights.bin is {data} bytes for {params} parameters"
    );
    assert!(!model.join("unet_b24.onnx").exists());
    let manifest = std::fs::read_to_string(model.join("model.toml")).unwrap();
    assert!(manifest.contains("[components.unet_b12]"), "{manifest}");
    assert!(!manifest.contains("[components.unet_b24]"), "{manifest}");

    // 2. one denoising step without guidance (UNet batch 12) on the CPU
    let (stdout, stderr) = views_step(&model, scratch.path(), "1");
    assert!(
        stdout.contains("wonder3d-shaped-random-weights")
            && stdout.contains("1 steps, UNet batch 12, on CPUExecutionProvider"),
        "{stdout}"
    );
    assert!(
        stderr.contains("mvdiffusion model loaded")
            && stderr.contains("provider=CPUExecutionProvider"),
        "{stderr}"
    );
    assert!(
        stderr.contains("six views generated") && stderr.contains("batch=12"),
        "{stderr}"
    );

    // 3. the tensors
    check_record(&scratch.path().join("record"));

    // 4. the views written
    check_views(&scratch.path().join("views"));
}
