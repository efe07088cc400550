//! `--device-profile`: which GPU a Vulkan plan's kernels are generated for.

use std::path::PathBuf;
use unicorn_ir::device::DeviceProfile;

/// How the device profile is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProfileChoice {
    /// The first GPU this machine's Vulkan loader lists (a CPU driver only when there is no GPU), or the
    /// generic profile when there is none.
    #[default]
    Auto,
    /// What every Vulkan 1.2 device offers.
    Generic,
    /// Device `N` in the loader's order (`vulkan:N`, as `unicorn-rt --list-devices` numbers them).
    Device(usize),
    /// A JSON file of [`DeviceProfile`].
    File(PathBuf),
}

impl ProfileChoice {
    /// Parse `auto`, `generic`, `vulkan:N` or a path to a JSON file.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ProfileChoice::Auto),
            "generic" => Ok(ProfileChoice::Generic),
            _ => match s.strip_prefix("vulkan:") {
                Some(n) => n
                    .parse()
                    .map(ProfileChoice::Device)
                    .map_err(|_| format!("expected vulkan:N with N a device number, got {s:?}")),
                None if s.ends_with(".json") => Ok(ProfileChoice::File(s.into())),
                None => Err(format!("expected auto, generic, vulkan:N or a .json profile, got {s:?}")),
            },
        }
    }

    /// The profile, with a line saying where it came from; a one-line error when a named device or file is
    /// missing.
    pub fn resolve(&self) -> Result<(DeviceProfile, String), String> {
        match self {
            ProfileChoice::Generic => Ok((DeviceProfile::generic(), "the generic Vulkan 1.2 profile".into())),
            ProfileChoice::File(p) => {
                let profile = DeviceProfile::from_file(p).map_err(|e| format!("--device-profile {e}"))?;
                let line = format!("{} (from {})", profile.name, p.display());
                Ok((profile, line))
            }
            ProfileChoice::Device(i) => {
                let list = unicorn_ir::device::devices().map_err(|e| format!("--device-profile vulkan:{i}: {e}"))?;
                let d = list.get(*i).ok_or_else(|| {
                    format!("--device-profile vulkan:{i}: this machine has {} Vulkan device(s)", list.len())
                })?;
                Ok((d.profile(), format!("{} (vulkan:{i})", d.name)))
            }
            ProfileChoice::Auto => {
                let list = unicorn_ir::device::devices().unwrap_or_default();
                let pick = list.iter().position(|d| d.kind != "cpu").or(if list.is_empty() { None } else { Some(0) });
                Ok(match pick {
                    Some(i) => (list[i].profile(), format!("{} (vulkan:{i}, found here)", list[i].name)),
                    None => (DeviceProfile::generic(), "the generic Vulkan 1.2 profile (no Vulkan device here)".into()),
                })
            }
        }
    }
}
