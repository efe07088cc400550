//! The `.ucp` file: a fixed prologue, page-aligned checksummed sections, and a JSON header at the end.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "UCPLAN\r\n" (the line ending catches text-mode mangling)
//! 8       4     format version, u32 little-endian
//! 12      4     reserved, 0
//! 16      8     header offset, u64 LE
//! 24      8     header length, u64 LE
//! 32      8     header checksum (XXH3-64 of the header bytes), u64 LE
//! 4096    ...   sections, each starting on a 4096-byte boundary
//! ...           header: JSON {"sections": [...], "plan": PlanHeader}
//! ```
//! The file is written under a temporary name in the destination folder and renamed when complete, so a
//! reader never sees a half-written plan (see [`crate::output`]: a character device such as /dev/null is
//! written in place, a destination that is one of the inputs is refused).

use crate::output::{Access, Output, OutputError};
use crate::plan::PlanHeader;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const MAGIC: [u8; 8] = *b"UCPLAN\r\n";
pub const FORMAT_VERSION: u32 = 5;
pub const SECTION_ALIGN: u64 = 4096;
const PROLOGUE: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    Weights,
    Kernels,
    Tokenizer,
    Metadata,
    /// JSON [`crate::chat::ChatSection`]: the checkpoint's chat template (absent if it had none).
    Chat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SectionEntry {
    pub kind: SectionKind,
    pub offset: u64,
    pub len: u64,
    /// XXH3-64 of the section's bytes.
    pub checksum: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileHeader {
    sections: Vec<SectionEntry>,
    plan: PlanHeader,
}

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{path}: not a Unicorn plan (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: plan format version {found}, this build reads version {FORMAT_VERSION}; recompile the plan with this unicornc")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: truncated or corrupt plan: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: section '{kind:?}' is corrupt (checksum mismatch)")]
    Checksum { path: PathBuf, kind: SectionKind },
    #[error("{path}: plan has no '{kind:?}' section")]
    MissingSection { path: PathBuf, kind: SectionKind },
}

/// Streams sections into the destination (a temporary file renamed into place, see [`crate::output`]), then
/// writes the header and patches the prologue.
pub struct PlanWriter {
    path: PathBuf,
    out: Output,
    pos: u64,
    sections: Vec<SectionEntry>,
    open: Option<(SectionKind, u64, Xxh3)>,
}

impl PlanWriter {
    /// Start writing `path`; `inputs` are the files the plan is made from, which it may not replace.
    pub fn create(path: &Path, inputs: &[&Path]) -> Result<Self, ContainerError> {
        let out = Output::create(path, inputs, Access::Seekable, "a plan")?;
        let mut w = Self { path: path.to_path_buf(), out, pos: 0, sections: Vec::new(), open: None };
        w.write_raw(&[0u8; PROLOGUE])?;
        Ok(w)
    }

    fn io(&self, error: std::io::Error) -> ContainerError {
        ContainerError::Io { path: self.path.clone(), error }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.out.write_all(bytes).map_err(|e| self.io(e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> Result<(), ContainerError> {
        let pad = self.pos.div_ceil(align) * align - self.pos;
        self.write_raw(&vec![0u8; pad as usize])
    }

    /// Start a section; bytes written with [`Self::write`] belong to it until [`Self::end_section`].
    pub fn begin_section(&mut self, kind: SectionKind) -> Result<(), ContainerError> {
        assert!(self.open.is_none(), "section already open");
        self.pad_to(SECTION_ALIGN)?;
        self.open = Some((kind, self.pos, Xxh3::new()));
        Ok(())
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        let (_, _, h) = self.open.as_mut().expect("no open section");
        h.update(bytes);
        self.write_raw(bytes)
    }

    /// Zero bytes up to `offset` from the start of the open section.
    pub fn pad_section_to(&mut self, offset: u64) -> Result<(), ContainerError> {
        let start = self.open.as_ref().expect("no open section").1;
        let have = self.pos - start;
        assert!(offset >= have, "section offset {offset} is behind {have}");
        self.write(&vec![0u8; (offset - have) as usize])
    }

    pub fn end_section(&mut self) -> Result<(), ContainerError> {
        let (kind, offset, h) = self.open.take().expect("no open section");
        self.sections.push(SectionEntry { kind, offset, len: self.pos - offset, checksum: h.digest() });
        Ok(())
    }

    /// A whole section at once.
    pub fn section(&mut self, kind: SectionKind, bytes: &[u8]) -> Result<(), ContainerError> {
        self.begin_section(kind)?;
        self.write(bytes)?;
        self.end_section()
    }

    /// Write the header, patch the prologue, and commit the output (sync and rename into place). Returns the
    /// plan's size in bytes.
    pub fn finish(mut self, plan: PlanHeader) -> Result<u64, ContainerError> {
        assert!(self.open.is_none(), "section left open");
        let header = FileHeader { sections: std::mem::take(&mut self.sections), plan };
        let json = serde_json::to_vec(&header).expect("plan header serializes");
        let header_offset = self.pos;
        self.write_raw(&json)?;
        let mut prologue = Vec::with_capacity(PROLOGUE);
        prologue.extend_from_slice(&MAGIC);
        prologue.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        prologue.extend_from_slice(&0u32.to_le_bytes());
        prologue.extend_from_slice(&header_offset.to_le_bytes());
        prologue.extend_from_slice(&(json.len() as u64).to_le_bytes());
        prologue.extend_from_slice(&xxh3_64(&json).to_le_bytes());
        self.out.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        self.out.write_all(&prologue).map_err(|e| self.io(e))?;
        self.out.commit()?;
        Ok(header_offset + json.len() as u64)
    }
}

/// Bytes read at a time when a plan is read into memory (progress is told between them).
const READ_CHUNK: usize = 64 << 20;

/// How [`PlanFile::open_with`] brings a plan's bytes into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Map the file: pages load on first touch and stay in the page cache, shared with other processes.
    Mapped,
    /// Read the whole file into anonymous memory backed by transparent huge pages where the kernel allows
    /// (`madvise(MADV_HUGEPAGE)`). Decoding streams every weight once per token, and with 2 MiB pages the
    /// stream takes far fewer TLB misses: on Zen 4 it reads a few percent faster than through 4 KiB pages.
    /// The file is read, not mapped, so its page-cache copy does not count in this process's memory.
    /// A plan larger than 90 % of the available memory (`MemAvailable`) is mapped instead.
    Resident,
}

/// Bytes of memory the kernel reports available for new allocations (`MemAvailable` of `/proc/meminfo`), where
/// it says.
pub fn available_memory() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let v = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok().map(|kb| kb * 1024)
}

/// A plan file in memory, with its sections verified.
pub struct PlanFile {
    pub path: PathBuf,
    pub header: PlanHeader,
    /// How the bytes got into memory: [`Residency::Mapped`] also when `Resident` was asked for but the plan is
    /// larger than 90 % of the memory the kernel reports available.
    pub residency: Residency,
    sections: Vec<SectionEntry>,
    map: memmap2::Mmap,
}

impl PlanFile {
    /// Open a plan by mapping it ([`Residency::Mapped`]).
    pub fn open(path: &Path) -> Result<Self, ContainerError> {
        Self::open_with(path, Residency::Mapped)
    }

    pub fn open_with(path: &Path, residency: Residency) -> Result<Self, ContainerError> {
        Self::open_observed(path, residency, &mut |_, _| {})
    }

    /// [`Self::open_with`], telling `seen(done, total)` how far it is: the bytes read into memory (where the plan
    /// is read rather than mapped) and checked against their checksums, of `total`.
    pub fn open_observed(
        path: &Path,
        residency: Residency,
        seen: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ContainerError> {
        let p = || path.to_path_buf();
        let io = |error| ContainerError::Io { path: p(), error };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // Reading a plan that does not fit would only end in the out-of-memory killer; a mapping can page.
        let residency = match residency {
            Residency::Resident if available_memory().is_some_and(|a| len > a / 10 * 9) => Residency::Mapped,
            r => r,
        };
        let map = match residency {
            // SAFETY: the plan is opened read-only; a concurrent writer replaces plans by rename, never in place.
            Residency::Mapped => unsafe { memmap2::Mmap::map(&file) }.map_err(io)?,
            Residency::Resident => {
                if len < PROLOGUE as u64 {
                    return Err(ContainerError::BadMagic { path: p() });
                }
                let len = usize::try_from(len).map_err(|_| io(std::io::ErrorKind::OutOfMemory.into()))?;
                let mut buf = memmap2::MmapOptions::new().len(len).map_anon().map_err(io)?;
                // Only a hint: without transparent huge pages the buffer is ordinary memory.
                #[cfg(target_os = "linux")]
                let _ = buf.advise(memmap2::Advice::HugePage);
                // Read and checksummed: twice the file, about.
                let total = 2 * len as u64;
                for (i, chunk) in buf.chunks_mut(READ_CHUNK).enumerate() {
                    std::io::Read::read_exact(&mut file, chunk).map_err(io)?;
                    seen((i * READ_CHUNK + chunk.len()) as u64, total);
                }
                buf.make_read_only().map_err(io)?
            }
        };
        let corrupt = |what: &str| ContainerError::Corrupt { path: p(), what: what.into() };
        if map.len() < PROLOGUE || map[..8] != MAGIC {
            return Err(ContainerError::BadMagic { path: p() });
        }
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(ContainerError::Version { path: p(), found: version });
        }
        let (off, len, sum) = (u64_at(16), u64_at(24), u64_at(32));
        let end =
            off.checked_add(len).filter(|&e| e <= map.len() as u64).ok_or_else(|| corrupt("header out of range"))?;
        let json = &map[off as usize..end as usize];
        if xxh3_64(json) != sum {
            return Err(corrupt("header checksum mismatch"));
        }
        let header: FileHeader =
            serde_json::from_slice(json).map_err(|e| corrupt(&format!("header does not parse: {e}")))?;
        let read = if residency == Residency::Resident { map.len() as u64 } else { 0 };
        let total = read + map.len() as u64;
        for s in &header.sections {
            let end =
                s.offset.checked_add(s.len).filter(|&e| e <= off).ok_or_else(|| corrupt("section out of range"))?;
            seen(read + s.offset, total);
            if xxh3_64(&map[s.offset as usize..end as usize]) != s.checksum {
                return Err(ContainerError::Checksum { path: p(), kind: s.kind });
            }
        }
        seen(total, total);
        Ok(Self { path: p(), header: header.plan, sections: header.sections, map, residency })
    }

    pub fn section(&self, kind: SectionKind) -> Result<&[u8], ContainerError> {
        let s = self
            .sections
            .iter()
            .find(|s| s.kind == kind)
            .ok_or(ContainerError::MissingSection { path: self.path.clone(), kind })?;
        Ok(&self.map[s.offset as usize..(s.offset + s.len) as usize])
    }

    pub fn sections(&self) -> &[SectionEntry] {
        &self.sections
    }

    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       24599240 kB\nMemFree:        20000000 kB\nMemAvailable:   23356680 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_356_680 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
    }
}
