//! The frontend's errors. Every message is one line that names the file and, where relevant, the tensor or the
//! config field.

use std::path::PathBuf;

fn shape_str(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A file or folder could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        // Not a `#[source]`: the message already ends with it, and the CLI prints the error chain.
        error: std::io::Error,
    },
    /// A file the checkpoint needs is absent (`what` says which and where it was looked for).
    #[error("{what}")]
    NotFound { path: PathBuf, what: String },
    /// A safetensors file (or a shard index) is malformed.
    #[error("{}: {msg}", path.display())]
    Safetensors { path: PathBuf, tensor: Option<String>, msg: String },
    /// config.json or generation_config.json says something unsupported or invalid.
    #[error("{}: {field}: {msg}", path.display())]
    Config { path: PathBuf, field: String, msg: String },
    /// A tensor the text model needs is not in the checkpoint.
    #[error("tensor '{name}' not found in {searched}")]
    MissingTensor { name: String, searched: String },
    /// A tensor's shape disagrees with the one config.json implies.
    #[error("{}: tensor '{name}'{} has shape {} but config.json implies {}", path.display(),
        stored.as_ref().map(|s| format!(" (stored as '{s}')")).unwrap_or_default(),
        shape_str(actual), shape_str(expected))]
    ShapeMismatch { path: PathBuf, name: String, stored: Option<String>, actual: Vec<usize>, expected: Vec<usize> },
    /// A tensor the text model needs has a dtype other than F32, F16, BF16.
    #[error("{}: tensor '{name}' has dtype {dtype}; only F32, F16 and BF16 are supported", path.display())]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String },
    /// A shard named by the index's weight_map is not on disk.
    #[error("{}: shard '{shard}' listed in weight_map is missing (looked for {})", index.display(), path.display())]
    MissingShard { index: PathBuf, shard: String, path: PathBuf },
    /// `--max-context 0`.
    #[error("--max-context must be at least 1 (got 0)")]
    MaxContext,
}

impl FrontendError {
    pub(crate) fn config(path: &std::path::Path, field: impl Into<String>, msg: impl Into<String>) -> Self {
        FrontendError::Config { path: path.to_path_buf(), field: field.into(), msg: msg.into() }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        FrontendError::Io { path: path.to_path_buf(), error: source }
    }
}
