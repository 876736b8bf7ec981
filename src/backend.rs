//! Choosing where tensors live: burn's wgpu backend on a real GPU, burn's CPU backend (flex)
//! otherwise. Software GPUs (lavapipe, SwiftShader) are ~60x slower than the CPU backend on these
//! machines, so `auto` takes them only when asked (`--backend wgpu`), e.g. to test WGSL paths.

use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// The user's backend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// wgpu on a real GPU, else the CPU backend.
    #[default]
    Auto,
    /// wgpu on whatever adapter it finds (software ones included).
    Wgpu,
    /// burn's CPU backend.
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "wgpu" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            _ => Err(format!(
                "unknown backend `{s}` (expected auto, wgpu or cpu)"
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// The device picked and a one-line description for the user.
#[derive(Debug, Clone)]
pub struct SelectedBackend {
    /// Device to create tensors on.
    pub device: Device,
    /// e.g. `wgpu (Vulkan, NVIDIA H100)` or `cpu (flex; only a software GPU was found: llvmpipe)`.
    pub description: String,
    /// True for the wgpu backend.
    pub is_wgpu: bool,
}

#[cfg(not(target_arch = "wasm32"))]
fn cpu(reason: &str) -> SelectedBackend {
    SelectedBackend {
        device: Device::flex(),
        description: format!("cpu (burn flex backend{reason})"),
        is_wgpu: false,
    }
}

/// The wgpu runtime, initialised once per process (burn refuses a second initialisation).
#[cfg(not(target_arch = "wasm32"))]
fn wgpu_runtime() -> &'static Result<WgpuRuntime, String> {
    static RUNTIME: std::sync::OnceLock<Result<WgpuRuntime, String>> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        Device::wgpu_options()
            .init_with_setup()
            .map(|(device, setup)| {
                use burn::tensor::wgpu::wgpu::Features;
                // Our kernels' subgroup variants, unless switched off (to compare, or to work
                // around a driver): WGTUNE_NO_SUBGROUPS=1.
                let off = std::env::var_os("WGTUNE_NO_SUBGROUPS").is_some_and(|v| v != "0");
                crate::kernels::set_subgroups(
                    setup.device.features().contains(Features::SUBGROUP) && !off,
                );
                let mut features = shader_features(setup.device.features());
                if off {
                    features.push_str(" (subgroup kernels off: WGTUNE_NO_SUBGROUPS)");
                }
                (device, setup.adapter.get_info(), features, setup)
            })
            .map_err(|e| e.to_string())
    })
}

/// burn's wgpu device, its adapter's description, its shader features and the wgpu handles.
#[cfg(not(target_arch = "wasm32"))]
type WgpuRuntime = (
    Device,
    burn::tensor::wgpu::wgpu::AdapterInfo,
    String,
    burn::tensor::wgpu::WgpuSetup,
);

/// The wgpu instance, adapter, device and queue of burn's wgpu runtime (initialising it), so the
/// desktop app can render on the very device the training uses; `None` without a wgpu adapter.
#[cfg(not(target_arch = "wasm32"))]
pub fn shared_wgpu_setup() -> Option<burn::tensor::wgpu::WgpuSetup> {
    wgpu_runtime().as_ref().ok().map(|r| r.3.clone())
}

/// The optional shader features the device enabled that matter to our kernels, for the backend
/// description (e.g. `shader-f16, subgroups`). With `subgroups` the quantized matrix-vector
/// kernel reduces with `subgroupAdd` (see [`crate::kernels::subgroups`]); `shader-f16` is
/// reported but not used (see the README's kernel notes).
#[cfg(not(target_arch = "wasm32"))]
fn shader_features(f: burn::tensor::wgpu::wgpu::Features) -> String {
    use burn::tensor::wgpu::wgpu::Features;
    let named = [
        (Features::SHADER_F16, "shader-f16"),
        (Features::SUBGROUP, "subgroups"),
    ];
    let on: Vec<&str> = named
        .iter()
        .filter(|(bit, _)| f.contains(*bit))
        .map(|(_, n)| *n)
        .collect();
    if on.is_empty() {
        "no shader-f16, no subgroups".into()
    } else {
        on.join(", ")
    }
}

/// Pick the backend (native: wgpu initialises synchronously; the web front end uses
/// `Device::wgpu_options().init_async()` instead).
#[cfg(not(target_arch = "wasm32"))]
pub fn select(choice: BackendChoice) -> Result<SelectedBackend, String> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    if choice == BackendChoice::Cpu {
        return Ok(cpu(""));
    }
    match wgpu_runtime() {
        Ok((device, info, features, _)) => {
            let device = device.clone();
            let software = info.device_type == DeviceType::Cpu;
            if software && choice == BackendChoice::Auto {
                return Ok(cpu(&format!(
                    "; the only GPU adapter is a software one: {}",
                    info.name
                )));
            }
            Ok(SelectedBackend {
                device,
                description: format!(
                    "wgpu ({:?}, {}{}; {features})",
                    info.backend,
                    info.name,
                    if software { ", software" } else { "" }
                ),
                is_wgpu: true,
            })
        }
        Err(e) if choice == BackendChoice::Auto => {
            Ok(cpu(&format!("; no usable GPU adapter: {e}")))
        }
        Err(e) => Err(format!("wgpu backend unavailable: {e}")),
    }
}
