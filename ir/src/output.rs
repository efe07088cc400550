//! Output files written so that nothing the user did not name is ever damaged.
//!
//! [`Output::create`] decides how a destination is written before a byte goes out:
//! - a regular file, or a path that does not exist yet, is written under a temporary name beside it and renamed
//!   into place by [`Output::commit`], so a reader never sees a half-written file and a failed write leaves the
//!   old file as it was (a symbolic link is followed: the file it points to is replaced, not the link);
//! - a character device (`/dev/null`, `/dev/full`, a terminal) is written in place and never replaced; so is a
//!   FIFO, for outputs that can be streamed;
//! - anything else (a directory, a block device, a socket), and a stream where the format needs to seek back, is
//!   refused with one line;
//! - a destination that is one of the inputs (the same device and inode, whatever the path says: hard links and
//!   symbolic links included) is refused, so `-o model.safetensors` cannot destroy the checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutputError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Refused { path: PathBuf, message: String },
}

impl OutputError {
    fn refused(path: &Path, message: impl Into<String>) -> Self {
        OutputError::Refused { path: path.to_path_buf(), message: message.into() }
    }
}

/// Whether the format can be written front to back, or must seek back to patch what it wrote first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Stream,
    Seekable,
}

/// An output file being written; see the module documentation. Dropped without [`Output::commit`], it removes
/// its temporary file and leaves the destination as it was.
pub struct Output {
    /// The destination as the user named it, for messages.
    path: PathBuf,
    /// Temporary file and the final path it is renamed to, when the destination is replaced.
    replace: Option<(PathBuf, PathBuf)>,
    file: BufWriter<File>,
    committed: bool,
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

impl Output {
    /// Open `path` for writing. `inputs` are the files the command reads (those that exist are compared by
    /// device and inode); `what` names the content in messages ("a plan").
    pub fn create(path: &Path, inputs: &[&Path], access: Access, what: &str) -> Result<Output, OutputError> {
        let io = |error| OutputError::Io { path: path.to_path_buf(), error };
        let existing = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(OutputError::refused(path, "is a symbolic link to a file that does not exist"));
                }
                None
            }
            Err(e) => return Err(io(e)),
        };
        if let Some(m) = &existing {
            for input in inputs {
                if let Ok(im) = std::fs::metadata(input) {
                    if im.dev() == m.dev() && im.ino() == m.ino() {
                        let same = if input == &path {
                            "is an input of this command".to_string()
                        } else {
                            format!("is the same file as the input {}", input.display())
                        };
                        return Err(OutputError::refused(path, format!("{same}; choose another output path")));
                    }
                }
            }
        }
        let ft = existing.as_ref().map(|m| m.file_type());
        match ft {
            None => Self::replacing(path, path.to_path_buf()),
            Some(t) if t.is_file() => {
                let target = std::fs::canonicalize(path).map_err(io)?;
                Self::replacing(path, target)
            }
            Some(t) if t.is_char_device() || (t.is_fifo() && access == Access::Stream) => {
                let mut file = OpenOptions::new().write(true).open(path).map_err(io)?;
                if access == Access::Seekable && file.stream_position().is_err() {
                    return Err(OutputError::refused(
                        path,
                        format!("is {} that cannot seek; {what} is written to a regular file", kind_of(t)),
                    ));
                }
                Ok(Output {
                    path: path.to_path_buf(),
                    replace: None,
                    file: BufWriter::with_capacity(1 << 20, file),
                    committed: false,
                })
            }
            Some(t) => Err(OutputError::refused(
                path,
                format!(
                    "is {}; {what} is written to a regular file (or a character device such as /dev/null)",
                    kind_of(t)
                ),
            )),
        }
    }

    fn replacing(path: &Path, target: PathBuf) -> Result<Output, OutputError> {
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
        let mut n = 0u32;
        loop {
            let tmp = dir.join(format!(".{name}.tmp{}.{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    return Ok(Output {
                        path: path.to_path_buf(),
                        replace: Some((tmp, target)),
                        file: BufWriter::with_capacity(1 << 20, file),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 64 => n += 1,
                Err(error) => return Err(OutputError::Io { path: path.to_path_buf(), error }),
            }
        }
    }

    /// The destination as named.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the destination is replaced on commit (false: written in place).
    pub fn replaces(&self) -> bool {
        self.replace.is_some()
    }

    /// Flush everything; a replaced file is synced and renamed into place.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let path = self.path.clone();
        let io = |error| OutputError::Io { path: path.clone(), error };
        self.file.flush().map_err(io)?;
        if let Some((tmp, target)) = &self.replace {
            self.file.get_ref().sync_all().map_err(io)?;
            std::fs::rename(tmp, target).map_err(io)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Output {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed {
            if let Some((tmp, _)) = &self.replace {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
    }

    #[test]
    fn a_regular_file_is_replaced_only_on_commit_and_not_at_all_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        let mut o = Output::create(&p, &[], Access::Seekable, "a plan").unwrap();
        assert!(o.replaces());
        o.write_all(b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        drop(o);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is removed");
        let mut o = Output::create(&p, &[], Access::Seekable, "a plan").unwrap();
        o.write_all(b"new contents").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symbolic_link_is_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.npy");
        let link = dir.path().join("link.npy");
        std::fs::write(&real, b"old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut o = Output::create(&link, &[], Access::Stream, "logits").unwrap();
        o.write_all(b"new").unwrap();
        o.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = Output::create(&dangling, &[], Access::Stream, "logits").err().unwrap().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn an_input_is_refused_by_inode_under_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        std::fs::write(&input, b"weights").unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&input, &hard).unwrap();
        let soft = dir.path().join("soft");
        std::os::unix::fs::symlink(&input, &soft).unwrap();
        let dotted = dir.path().join(".").join("model.safetensors");
        for p in [&input, &hard, &soft, &dotted] {
            let e = Output::create(p, &[&input], Access::Seekable, "a plan").err().unwrap().to_string();
            assert!(e.contains("choose another output path"), "{}: {e}", p.display());
            assert_eq!(e.lines().count(), 1);
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"weights");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "nothing was created");
    }

    #[test]
    fn a_fifo_is_streamed_into_but_refused_where_the_format_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = Output::create(&fifo, &[], Access::Seekable, "a plan").err().unwrap().to_string();
        assert!(e.contains("is a FIFO") && e.contains("a plan"), "{e}");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let mut o = Output::create(&fifo, &[], Access::Stream, "logits").unwrap();
        assert!(!o.replaces());
        o.write_all(b"streamed").unwrap();
        o.commit().unwrap();
        assert_eq!(reader.join().unwrap(), b"streamed");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO is still a FIFO");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Output::create(dir.path(), &[], Access::Stream, "logits").err().unwrap().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }
}
