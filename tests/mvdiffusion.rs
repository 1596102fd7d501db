//! The mvdiffusion pipeline on the tiny models (testdata/models/tiny, made by
//! scripts/make_tiny_models.py) through real ONNX Runtime on CPU.
//!
//! `M3DNODE_TEST_DEVICE=cuda` (or `tensorrt`) moves the pipeline tests onto the GPU: that is
//! how scripts/gpu-check proves the GPU path on a lent machine, comparing with the CPU result
//! within [`GPU_VIEWS_MAX`]. Unset (the suite, CI), everything runs on the CPU.
//!
//! ONNX Runtime comes from ORT_DYLIB_PATH, which scripts/test sets after installing
//! onnxruntime==1.31.1 into target/pyenv; without it these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::Command;

use m3dnode::onnx::{Device, OrtError, OrtSettings, Provider};
use m3dnode::recon::mvdiffusion::{
    KeySlice, Manifest, ManifestError, MvDiffusionError, Pipeline, RunOptions, SixViews, Windowing,
    save_views,
};
use m3dnode::volume::{Rescale, Volume, Voxels};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/models/tiny")
}

/// The venv scripts/test creates, if it exists.
fn venv_library() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/lib");
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let p = entry
            .path()
            .join("site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

fn library() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => venv_library().unwrap_or_else(|| {
            panic!(
                "ONNX Runtime 1.31.1 not found: ORT_DYLIB_PATH is not set and target/pyenv has \
                 no onnxruntime. Run the tests with scripts/test (it installs onnxruntime==1.31.1 \
                 from PyPI into target/pyenv and sets ORT_DYLIB_PATH)."
            )
        }),
    }
}

fn cpu() -> OrtSettings {
    OrtSettings {
        library: Some(library()),
        device: Device::Cpu,
    }
}

/// The device the pipeline tests run on: `M3DNODE_TEST_DEVICE` (cpu, cuda or tensorrt), set by
/// scripts/gpu-check on a GPU machine; the CPU when unset, as in the suite.
fn test_device() -> Device {
    match std::env::var("M3DNODE_TEST_DEVICE") {
        Ok(s) if !s.is_empty() => match s.parse() {
            Ok(Device::Auto) | Err(_) => {
                panic!("M3DNODE_TEST_DEVICE={s:?}: expected cpu, cuda or tensorrt")
            }
            Ok(d) => d,
        },
        _ => Device::Cpu,
    }
}

/// The provider [`test_device`] must run on (no fallback: the device is forced).
fn test_provider() -> Provider {
    match test_device() {
        Device::Cuda => Provider::Cuda,
        Device::TensorRt => Provider::TensorRt,
        Device::Cpu | Device::Auto => Provider::Cpu,
    }
}

fn on_test_device() -> OrtSettings {
    OrtSettings {
        device: test_device(),
        ..cpu()
    }
}

/// Largest |GPU - CPU| allowed in the views (unit range): ONNX Runtime's CUDA provider uses
/// TF32 matrix products and other cuDNN algorithms than the CPU's f32, and the difference
/// grows over the denoising steps; 2e-2 is about five 8-bit grey levels.
const GPU_VIEWS_MAX: f32 = 2e-2;
/// Largest mean |GPU - CPU| allowed in the views: the bulk must agree much more closely than
/// the worst pixel.
const GPU_VIEWS_MEAN: f32 = 2e-3;
/// Device step against host step on the same GPU (the UNet is the same; only the update
/// arithmetic differs, fused on the GPU): looser than the CPU's 1e-5.
const GPU_STEP_MAX: f32 = 1e-4;

/// The venv's python, next to the library (…/lib/python3.X/site-packages/onnxruntime/capi/).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("M3DNODE_PYTHON") {
        return PathBuf::from(p);
    }
    let lib = library();
    let venv = lib.ancestors().nth(6).expect("venv layout");
    venv.join("bin/python")
}

/// The tiny model on [`test_device`].
fn pipeline() -> &'static Pipeline {
    static P: std::sync::OnceLock<Pipeline> = std::sync::OnceLock::new();
    P.get_or_init(|| Pipeline::load(&tiny(), &on_test_device()).unwrap())
}

/// The tiny model on the CPU, whatever [`test_device`] is: the reference for the GPU and for
/// Python's onnxruntime (which runs on the CPU).
fn cpu_pipeline() -> &'static Pipeline {
    static P: std::sync::OnceLock<Pipeline> = std::sync::OnceLock::new();
    P.get_or_init(|| Pipeline::load(&tiny(), &cpu()).unwrap())
}

/// A 64×64×9 CT volume: air with a 400 HU disc whose radius peaks at slice 4.
fn ct_volume() -> Volume {
    let (n, s) = (64usize, 9usize);
    let mut v = vec![-1000i16; n * n * s];
    for k in 0..s {
        let r = 20.0 - 3.0 * (k as f64 - 4.0).abs();
        for j in 0..n {
            for i in 0..n {
                let (x, y) = (i as f64 - 30.0, j as f64 - 34.0);
                if x * x + 0.6 * y * y < r * r {
                    v[k * n * n + j * n + i] = 400 + (i as i16) * 3;
                }
            }
        }
    }
    Volume {
        dims: [n, n, s],
        voxels: Voxels::I16(v),
        rescale: Rescale {
            slope: 1.0,
            intercept: 0.0,
        },
        affine: [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
        ],
        spacing: [1.0, 1.0, 2.0],
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.4".into(),
        frame_of_reference_uid: None,
        modality: "CT".into(),
        sources: Vec::new(),
        warnings: Vec::new(),
    }
}

fn options(seed: u64, guidance: f32) -> RunOptions {
    RunOptions {
        seed,
        guidance_scale: Some(guidance),
        steps: Some(10),
        key: KeySlice::LargestForeground,
        windowing: Windowing::preset("ct-bone").unwrap(),
        ..RunOptions::default()
    }
}

/// Mean |a - b| over the normal and colour maps of the six views.
fn mean_diff(a: &SixViews, b: &SixViews) -> f32 {
    let (sum, n) = a
        .views
        .iter()
        .zip(&b.views)
        .flat_map(|(x, y)| {
            x.normal
                .iter()
                .zip(&y.normal)
                .chain(x.colour.iter().zip(&y.colour))
        })
        .fold((0.0f64, 0usize), |(s, n), (p, q)| {
            (s + f64::from((p - q).abs()), n + 1)
        });
    (sum / n.max(1) as f64) as f32
}

fn max_diff(a: &SixViews, b: &SixViews) -> f32 {
    a.views
        .iter()
        .zip(&b.views)
        .flat_map(|(x, y)| {
            x.normal
                .iter()
                .zip(&y.normal)
                .chain(x.colour.iter().zip(&y.colour))
        })
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

/// A copy of the tiny model directory whose model.toml `edit` may change.
fn edited(edit: impl FnOnce(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny()).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    for f in ["vae_decoder_rank3.onnx", "vae_decoder_float16.onnx"] {
        std::fs::copy(tiny().join("broken").join(f), dir.path().join(f)).unwrap();
    }
    let text = std::fs::read_to_string(dir.path().join("model.toml")).unwrap();
    std::fs::write(dir.path().join("model.toml"), edit(&text)).unwrap();
    dir
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Points the vae_decoder component at another file of the tiny directory (with its real
/// sha256): `broken/NAME` files are copied next to the manifest by [`edited`].
fn decoder_file(text: &str, relative: &str) -> String {
    component_file(text, "vae_decoder", relative)
}

/// Points `component` at another file of the tiny directory, with that file's sha256.
fn component_file(text: &str, component: &str, relative: &str) -> String {
    let file = Path::new(relative).file_name().unwrap().to_str().unwrap();
    let sha = sha256_of(&tiny().join(relative));
    let start = text.find(&format!("[components.{component}]")).unwrap();
    let (head, tail) = text.split_at(start);
    let i = tail.find("sha256 = \"").unwrap() + 10;
    let old_sha = tail[i..i + 64].to_string();
    let j = tail.find("file = \"").unwrap() + 8;
    let old_file = tail[j..].split('"').next().unwrap().to_string();
    format!(
        "{head}{}",
        tail.replacen(
            &format!("file = \"{old_file}\""),
            &format!("file = \"{file}\""),
            1
        )
        .replacen(&old_sha, &sha, 1)
    )
}

/// The manifest with `component`'s sha256 replaced by zeros.
fn zero_sha256(text: &str, component: &str) -> String {
    let i = text.find(&format!("[components.{component}]")).unwrap();
    let j = i + text[i..].find("sha256 = \"").unwrap() + 10;
    format!("{}{}{}", &text[..j], "0".repeat(64), &text[j + 64..])
}

#[test]
fn manifest_missing_file_is_named() {
    let dir = edited(|t| t.to_string());
    std::fs::remove_file(dir.path().join("unet_b12.onnx")).unwrap();
    let err = Manifest::load(dir.path()).unwrap_err();
    assert!(matches!(err, ManifestError::MissingFile { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("unet_b12") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn manifest_wrong_sha256_is_named() {
    let dir = edited(|t| zero_sha256(t, "vae_encoder"));
    let err = Manifest::load(dir.path()).unwrap_err();
    assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("vae_encoder") && msg.contains(&"0".repeat(64)),
        "{msg}"
    );
}

#[test]
fn manifest_wrong_input_name_is_named() {
    // the manifest renames the UNet's input: the pipeline cannot drive it
    let dir = edited(|t| t.replacen("name = \"class_labels\"", "name = \"camera\"", 1));
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("unet_b12") && err.contains("`class_labels`"),
        "{err}"
    );

    // the manifest is right but the ONNX file has other names (an encoder where the decoder
    // should be): found once ONNX Runtime reads the file
    let dir = edited(|t| decoder_file(t, "vae_encoder.onnx"));
    let err = Pipeline::load(dir.path(), &cpu()).unwrap_err().to_string();
    assert!(
        err.contains("vae_decoder") && err.contains("`latent_sample` is declared"),
        "{err}"
    );
}

#[test]
fn manifest_wrong_rank_is_named() {
    let dir = edited(|t| decoder_file(t, "broken/vae_decoder_rank3.onnx"));
    let err = Pipeline::load(dir.path(), &cpu()).unwrap_err().to_string();
    assert!(
        err.contains("vae_decoder") && err.contains("rank 4") && err.contains("rank 3"),
        "{err}"
    );
    // and a manifest declaring a rank the pipeline cannot feed
    let dir = edited(|t| t.replacen("shape = [12, 10]", "shape = [12, 10, 1]", 1));
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("class_labels") && err.contains("[12, 10, 1]"),
        "{err}"
    );
}

#[test]
fn manifest_wrong_dtype_is_named() {
    let dir = edited(|t| decoder_file(t, "broken/vae_decoder_float16.onnx"));
    let err = Pipeline::load(dir.path(), &cpu()).unwrap_err().to_string();
    assert!(
        err.contains("vae_decoder") && err.contains("float32") && err.contains("float16"),
        "{err}"
    );
    let dir = edited(|t| t.replacen("dtype = \"int64\"", "dtype = \"float32\"", 1));
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("`timestep` must be int64"), "{err}");
}

#[test]
fn six_views_have_the_model_resolution_and_unit_range() {
    let views = pipeline().run(&ct_volume(), &options(7, 3.0)).unwrap();
    assert_eq!(views.resolution, 256);
    let names: Vec<&str> = views.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "front",
            "front_right",
            "right",
            "back",
            "left",
            "front_left"
        ]
    );
    for v in &views.views {
        assert_eq!(v.normal.len(), 256 * 256 * 3);
        assert_eq!(v.colour.len(), 256 * 256 * 3);
        assert_eq!(v.mask.len(), 256 * 256);
        assert!(
            v.normal
                .iter()
                .chain(&v.colour)
                .all(|x| (0.0..=1.0).contains(x))
        );
    }
    assert_eq!(views.condition.slice, 4, "largest foreground");
    assert_eq!(views.stats.batch, 24);
    assert_eq!(views.stats.steps, 10);
    assert_eq!(views.stats.provider, Some(test_provider()));
    let out = tempfile::tempdir().unwrap();
    save_views(&views, out.path()).unwrap();
    for f in [
        "front_normal.png",
        "back_colour.png",
        "left_mask.png",
        "input.png",
    ] {
        assert!(out.path().join(f).is_file(), "{f}");
    }
}

#[test]
fn a_seed_gives_the_same_views() {
    let a = pipeline().run(&ct_volume(), &options(11, 3.0)).unwrap();
    let b = pipeline().run(&ct_volume(), &options(11, 3.0)).unwrap();
    assert_eq!(
        a,
        SixViews {
            stats: a.stats,
            ..b.clone()
        }
    );
    let c = pipeline().run(&ct_volume(), &options(12, 3.0)).unwrap();
    assert!(max_diff(&a, &c) > 1e-3, "another seed, other views");
}

#[test]
fn guidance_changes_the_views() {
    let plain = pipeline().run(&ct_volume(), &options(5, 1.0)).unwrap();
    assert_eq!(plain.stats.batch, 12, "g = 1 skips guidance");
    let guided = pipeline().run(&ct_volume(), &options(5, 3.0)).unwrap();
    assert_eq!(guided.stats.batch, 24);
    let d = max_diff(&plain, &guided);
    assert!(d > 1e-2, "guidance changed the views by only {d}");
    let stronger = pipeline().run(&ct_volume(), &options(5, 6.0)).unwrap();
    assert!(max_diff(&guided, &stronger) > 1e-3);
}

/// The views on [`test_device`] against the CPU's, from a pipeline loaded apart: identical
/// on the CPU (the run is deterministic), within [`GPU_VIEWS_MAX`] / [`GPU_VIEWS_MEAN`] on
/// the GPU.
#[test]
fn views_on_the_test_device_equal_the_cpu_views() {
    for guidance in [1.0, 3.0] {
        let on_device = pipeline()
            .run(&ct_volume(), &options(21, guidance))
            .unwrap();
        let on_cpu = cpu_pipeline()
            .run(&ct_volume(), &options(21, guidance))
            .unwrap();
        assert_eq!(on_device.stats.provider, Some(test_provider()));
        assert_eq!(on_cpu.stats.provider, Some(Provider::Cpu));
        let (max, mean) = (
            max_diff(&on_device, &on_cpu),
            mean_diff(&on_device, &on_cpu),
        );
        eprintln!(
            "g = {guidance}: {:?} vs CPU: max |diff| = {max}, mean |diff| = {mean}",
            test_device()
        );
        if test_device() == Device::Cpu {
            assert_eq!(max, 0.0, "two CPU pipelines disagree");
        } else {
            assert!(max <= GPU_VIEWS_MAX, "views differ from the CPU's by {max}");
            assert!(
                mean <= GPU_VIEWS_MEAN,
                "views differ from the CPU's by {mean} on average"
            );
        }
    }
}

fn python_reference(guidance: f32) {
    let rec = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        record: Some(rec.path().to_path_buf()),
        ..options(3, guidance)
    };
    cpu_pipeline().run(&ct_volume(), &opts).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mvdiffusion_reference.py");
    let out = Command::new(python())
        .arg(script)
        .arg(tiny())
        .arg(rec.path())
        .args(["--steps", "10", "--guidance", &guidance.to_string()])
        .output()
        .expect("python from the venv (run scripts/test)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
}

#[test]
fn python_onnxruntime_gives_the_same_tensors_with_guidance() {
    python_reference(3.0);
}

#[test]
fn python_onnxruntime_gives_the_same_tensors_without_guidance() {
    python_reference(1.0);
}

/// The f32 data of a `.npy` file the recorder wrote.
fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The tiny model without `[components.step]`: the denoising step runs on the host.
fn host_step_model() -> tempfile::TempDir {
    edited(|t| {
        let i = t.find("\n[components.step]").unwrap();
        t[..i + 1].to_string()
    })
}

fn device_step_matches_host_step(guidance: f32) {
    let host_dir = host_step_model();
    let host = Pipeline::load(host_dir.path(), &on_test_device()).unwrap();
    assert_eq!(host.step_location(), "host");
    assert_eq!(pipeline().step_location(), "device");
    let run = |p: &Pipeline| {
        let rec = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            record: Some(rec.path().to_path_buf()),
            ..options(9, guidance)
        };
        let views = p.run(&ct_volume(), &opts).unwrap();
        (views, rec)
    };
    let (on_device, dev_rec) = run(pipeline());
    let (on_host, host_rec) = run(&host);
    assert!(on_device.stats.device_step);
    assert!(!on_host.stats.device_step);
    assert_eq!(on_device.stats.provider, Some(test_provider()));
    assert_eq!(on_host.stats.provider, Some(test_provider()));
    let tolerance = if test_device() == Device::Cpu {
        1e-5
    } else {
        GPU_STEP_MAX
    };
    for name in ["step_noise.npy", "initial_noise.npy"] {
        assert_eq!(
            read_npy(&dev_rec.path().join(name)),
            read_npy(&host_rec.path().join(name)),
            "{name}: the same random numbers"
        );
    }
    let a = read_npy(&dev_rec.path().join("final_latents.npy"));
    let b = read_npy(&host_rec.path().join("final_latents.npy"));
    assert_eq!(a.len(), 12 * 4 * 32 * 32);
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    eprintln!("g = {guidance}: final latents, device step vs host step: max |diff| = {d}");
    assert!(
        d <= tolerance,
        "final latents: device step vs host step differ by {d}"
    );
    let d = max_diff(&on_device, &on_host);
    assert!(
        d <= tolerance,
        "views: device step vs host step differ by {d}"
    );
}

#[test]
fn device_step_equals_host_step_with_guidance() {
    device_step_matches_host_step(3.0);
}

#[test]
fn device_step_equals_host_step_without_guidance() {
    device_step_matches_host_step(1.0);
}

#[test]
fn manifest_step_component_is_validated() {
    let dir = edited(|t| t.replacen("name = \"coefficients\"", "name = \"coeffs\"", 1));
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("components.step") && err.contains("`coefficients`"),
        "{err}"
    );
    let dir = edited(|t| zero_sha256(t, "step"));
    let err = Manifest::load(dir.path()).unwrap_err();
    assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("step"), "{err}");
    // the UNet where the step graph should be: found once ONNX Runtime reads the file
    let dir = edited(|t| component_file(t, "step", "unet_b12.onnx"));
    let err = Pipeline::load(dir.path(), &cpu()).unwrap_err().to_string();
    assert!(err.contains("step") && err.contains("is declared"), "{err}");
}

/// `m3dnode views` on the small CT head series with the tiny model.
fn views_cli(extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let series = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/series/ct_head_axial_small");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_m3dnode"));
    cmd.arg("views")
        .arg(series)
        .arg("--model")
        .arg(tiny())
        .args(["--steps", "3", "--window", "ct-bone"])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn cuda_on_a_cpu_only_library_is_a_clear_error() {
    let settings = OrtSettings {
        device: Device::Cuda,
        ..cpu()
    };
    let err = Pipeline::load(&tiny(), &settings).unwrap_err();
    assert!(
        matches!(
            err,
            MvDiffusionError::Ort(OrtError::Provider {
                provider: Provider::Cuda,
                ..
            })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("device = \"cuda\"") && msg.contains("CUDAExecutionProvider"),
        "{msg}"
    );
}

#[test]
fn auto_falls_back_to_cpu_and_says_so() {
    // In a process of its own: the log is the program's, and the device choice is made fresh.
    let lib = library();
    let out = views_cli(
        &["--device", "auto"],
        &[
            ("ORT_DYLIB_PATH", lib.to_str().unwrap()),
            ("RUST_LOG", "m3dnode=info"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("CUDAExecutionProvider unavailable, falling back to CPUExecutionProvider"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ONNX Runtime session ready")
            && stderr.contains("provider=CPUExecutionProvider"),
        "{stderr}"
    );
    assert!(stdout.contains("on CPUExecutionProvider"), "{stdout}");
}

#[test]
fn a_missing_or_wrong_library_is_an_error_not_a_panic() {
    let out = views_cli(
        &["--device", "cpu"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // a file that is not ONNX Runtime
    let not_ort = tiny().join("unet_b12.onnx");
    let out = views_cli(
        &["--device", "cpu"],
        &[("ORT_DYLIB_PATH", not_ort.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot use ONNX Runtime library"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // no library named at all
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_m3dnode"));
    let out = cmd
        .arg("views")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/series/ct_head_axial_small"))
        .arg("--model")
        .arg(tiny())
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ORT_DYLIB_PATH"), "{stderr}");
}

#[test]
fn views_cli_saves_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library();
    let out = views_cli(
        &[
            "--device",
            "cpu",
            "--key",
            "10",
            "--save-views",
            dir.path().to_str().unwrap(),
        ],
        &[("ORT_DYLIB_PATH", lib.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Instance Number 10 is the tenth slice from the bottom of this series
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("key slice 9,"), "{stdout}");
    let n = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(
        n,
        6 * 4 + 1,
        "normal, colour, mask, Wonder3D's RGBA normals per view, and the input"
    );
    // The NeuS command takes the saved views as they are.
    let stl = dir.path().join("out.stl");
    let out = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["neus", dir.path().to_str().unwrap(), "-o"])
        .arg(&stl)
        .args(["--fast", "--steps", "5", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mesh = m3dnode::mesh::read_stl(&std::fs::read(&stl).unwrap()).unwrap();
    assert!(m3dnode::mesh::metrics(&mesh).triangles > 0);
}

#[test]
fn sessions_are_created_once_per_model() {
    let a = Pipeline::load(&tiny(), &cpu()).unwrap();
    let b = Pipeline::load(&tiny(), &cpu()).unwrap();
    assert!(a.shares_sessions_with(&b));
}
