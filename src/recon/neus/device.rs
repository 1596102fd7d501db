//! Choosing the backend: CUDA when built with `gpu-cuda` and a driver answers, else the CPU.
//!
//! burn's CUDA backend compiles its kernels with NVRTC at run time, so the build needs no
//! toolkit; but a missing driver only shows as a panic on first use. So the probe first
//! looks for the driver library (`libcuda.so.1`) and then runs one tiny tensor operation
//! inside `catch_unwind`, once per process.

use super::{Device, NeusError};

/// The backend a fit ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChosenDevice {
    /// burn's pure-Rust `NdArray` backend.
    Cpu,
    /// burn's CUDA backend (feature `gpu-cuda`).
    #[cfg(feature = "gpu-cuda")]
    Cuda,
}

/// Resolves the setting to a backend, with the reason `auto` fell back to the CPU.
pub(super) fn resolve(device: Device) -> Result<(ChosenDevice, Option<String>), NeusError> {
    match device {
        Device::Cpu => Ok((ChosenDevice::Cpu, None)),
        Device::Cuda => match cuda_probe() {
            Ok(d) => Ok((d, None)),
            Err(why) => Err(NeusError::CudaUnavailable(why)),
        },
        Device::Auto => match cuda_probe() {
            Ok(d) => Ok((d, None)),
            Err(why) => {
                tracing::warn!(reason = %why, "CUDA unavailable; NeuS runs on the CPU");
                Ok((ChosenDevice::Cpu, Some(why)))
            }
        },
    }
}

#[cfg(not(feature = "gpu-cuda"))]
fn cuda_probe() -> Result<ChosenDevice, String> {
    Err("this m3dnode was built without the `gpu-cuda` feature".to_string())
}

#[cfg(feature = "gpu-cuda")]
fn cuda_probe() -> Result<ChosenDevice, String> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: dlopen with a valid C string; the handle is closed again at once.
            let found = unsafe {
                let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY);
                if !h.is_null() {
                    libc::dlclose(h);
                }
                !h.is_null()
            };
            if !found {
                return Err("no NVIDIA driver (libcuda.so.1 not found)".to_string());
            }
            std::panic::catch_unwind(|| {
                use burn::tensor::Tensor;
                let dev = Default::default();
                let t = Tensor::<burn::backend::Cuda, 1>::from_floats([1.0f32, 2.0], &dev);
                t.sum().into_data()
            })
            .map(|_| ())
            .map_err(|_| "the CUDA driver did not answer a first tensor operation".to_string())
        })
        .clone()
        .map(|()| ChosenDevice::Cuda)
}
