//! XRT's version as its installed headers state it. Shared by `build.rs` (which decides whether to build the shim)
//! and the unit tests.

/// The oldest XRT that drives the Phoenix NPU: `xrt::hw_context` on the amdxdna driver.
pub const MIN: (u32, u32) = (2, 17);

/// `(major, minor)` from the text of an XRT version header: `#define XRT_VERSION_CODE XRT_VERSION(2, 17)` in
/// `include/version.h` (2.17) or `include/xrt/detail/version-slim.h` (later releases), else the
/// `xrt_build_version[] = "2.17.319"` string beside it.
pub fn parse(text: &str) -> Option<(u32, u32)> {
    text.lines().find_map(from_version_code).or_else(|| text.lines().find_map(from_build_string))
}

fn from_version_code(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim_start().strip_prefix("#define")?.trim_start().strip_prefix("XRT_VERSION_CODE")?;
    let args = rest.trim_start().strip_prefix("XRT_VERSION")?.trim_start().strip_prefix('(')?;
    let (major, rest) = args.split_once(',')?;
    let (minor, _) = rest.split_once(')')?;
    Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
}

fn from_build_string(line: &str) -> Option<(u32, u32)> {
    let (_, rest) = line.split_once("xrt_build_version[]")?;
    let (_, quoted) = rest.split_once('"')?;
    let (version, _) = quoted.split_once('"')?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
