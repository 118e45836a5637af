//! Where a role runs its models: `cpu`, `cuda` or `cuda:N`, named in CLUSTER.json and on the
//! command line, and checked at start so that a missing GPU is an error, never a silent CPU run.

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceName(pub tch::Device);

impl Default for DeviceName {
    fn default() -> Self {
        Self::CPU
    }
}

impl DeviceName {
    pub const CPU: Self = Self(tch::Device::Cpu);

    pub fn is_cpu(&self) -> bool {
        self.0 == tch::Device::Cpu
    }

    /// The device, after checking this process can use it.
    pub fn open(&self) -> Result<tch::Device> {
        if let tch::Device::Cuda(n) = self.0 {
            let loaded = load_cuda_backend();
            let count = if tch::Cuda::is_available() {
                tch::Cuda::device_count() as usize
            } else {
                0
            };
            if count == 0 {
                let why = match loaded {
                    Ok(()) => "libtorch's CUDA backend is loaded but sees no GPU and driver".to_string(),
                    Err(e) => format!("libtorch's CUDA backend did not load: {e}"),
                };
                bail!("device {self}: no CUDA device is available to this process ({why}); use device cpu");
            }
            if n >= count {
                bail!(
                    "device {self}: this machine has {count} CUDA device(s), cuda:0 to cuda:{}",
                    count - 1
                );
            }
        }
        Ok(self.0)
    }
}

/// Loads libtorch_cuda.so (beside libtorch_cpu.so, found through the binary's rpath). The linker
/// drops it from the binary because no symbol of it is called directly; loaded, it registers the
/// CUDA backend with libtorch. Only a role asked for a GPU pays for loading it.
fn load_cuda_backend() -> std::result::Result<(), String> {
    static LOADED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen/dlerror with a NUL-terminated name; the handle is kept for the process.
            unsafe {
                let h = libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if h.is_null() {
                    let e = libc::dlerror();
                    return Err(if e.is_null() {
                        "libtorch_cuda.so not found".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    });
                }
            }
            Ok(())
        })
        .clone()
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            tch::Device::Cpu => f.write_str("cpu"),
            tch::Device::Cuda(n) => write!(f, "cuda:{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl FromStr for DeviceName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let d = match s {
            "cpu" => tch::Device::Cpu,
            "cuda" => tch::Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => tch::Device::Cuda(n),
                _ => bail!("device '{s}': expected cpu, cuda or cuda:N"),
            },
        };
        Ok(Self(d))
    }
}

impl Serialize for DeviceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (s, d) in [
            ("cpu", tch::Device::Cpu),
            ("cuda", tch::Device::Cuda(0)),
            ("cuda:1", tch::Device::Cuda(1)),
        ] {
            let n: DeviceName = s.parse().unwrap();
            assert_eq!(n.0, d);
            assert_eq!(n.to_string().parse::<DeviceName>().unwrap(), n);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = bad.parse::<DeviceName>().unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn a_gpu_this_process_cannot_use_is_an_error_naming_it() {
        assert_eq!(DeviceName::CPU.open().unwrap(), tch::Device::Cpu);
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count() as usize
        } else {
            0
        };
        let beyond = DeviceName(tch::Device::Cuda(count));
        let e = beyond.open().unwrap_err().to_string();
        assert!(e.contains(&format!("device cuda:{count}")), "{e}");
    }
}
