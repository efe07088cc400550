//! Checkpoint loading: a Hugging Face checkpoint (config.json + safetensors, single or sharded) becomes a
//! normalized [`ModelSpec`] and a table of memory-mapped tensors under canonical Llama-style names.
//!
//! - [`config`] maps config.json (any supported family, old or new spelling, transformers' defaults for what it
//!   omits) onto the spec; every architecture-specific rule sits in one table there.
//! - [`safetensors`] reads and validates safetensors headers and maps the files.
//! - [`names`] canonicalizes tensor names (multimodal Gemma 3 prefixes, skipped vision tensors) and lists the
//!   tensors the text model reads.
//!
//! [`Checkpoint::open`] checks every tensor the text model reads (present, F32/F16/BF16, the shape the config
//! implies) before returning, so a broken checkpoint fails before any work is done.

mod chat;
mod config;
mod error;
mod names;
mod safetensors;

pub use error::FrontendError;
pub use names::{canonical_name, text_model_tensors};

use memmap2::UncheckedAdvice;
use safetensors::Shard;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unicorn_ir::quant::SourceDType;
use unicorn_ir::spec::ModelSpec;

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// A tensor of the checkpoint, under its canonical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// Canonical (Llama-style) name.
    pub name: String,
    pub dtype: SourceDType,
    pub shape: Vec<usize>,
    /// The name in the file (differs from `name` for multimodal layouts).
    stored: String,
    shard: usize,
    /// Byte range in the shard's mapping.
    begin: usize,
    end: usize,
}

impl TensorRef {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.end - self.begin
    }
}

/// An opened checkpoint: the spec, the raw side files, and the memory-mapped tensors.
#[derive(Debug)]
pub struct Checkpoint {
    pub spec: ModelSpec,
    /// What the user passed.
    pub source: PathBuf,
    /// Raw text of config.json.
    pub config_json: String,
    pub generation_config_json: Option<String>,
    /// tokenizer.json bytes, if present beside the weights.
    pub tokenizer_json: Option<Vec<u8>>,
    /// The chat template (tokenizer_config.json, chat_template.jinja or chat_template.json), if any.
    pub chat: Option<unicorn_ir::chat::ChatSection>,
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorRef>,
    /// Text-model tensors whose dtype the frontend does not read: canonical name -> (shard, stored name, dtype).
    unsupported: HashMap<String, (usize, String, String)>,
    /// The weight file(s), for "not found" messages.
    searched: String,
    total_bytes: u64,
    /// The files read, see [`Checkpoint::input_files`].
    inputs: Vec<PathBuf>,
}

/// Where the weights are.
enum Weights {
    Single(PathBuf),
    Index(PathBuf),
}

fn locate(model: &Path) -> Result<(PathBuf, Weights), FrontendError> {
    let meta = std::fs::metadata(model).map_err(|e| FrontendError::io(model, e))?;
    if meta.is_dir() {
        let single = model.join(SINGLE);
        let index = model.join(INDEX);
        let w = if single.is_file() {
            Weights::Single(single)
        } else if index.is_file() {
            Weights::Index(index)
        } else {
            return Err(FrontendError::NotFound {
                path: model.to_path_buf(),
                what: format!("{}: no {SINGLE} or {INDEX} in this folder", model.display()),
            });
        };
        return Ok((model.to_path_buf(), w));
    }
    let dir = match model.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let is_json = model.extension().is_some_and(|e| e == "json");
    Ok((dir, if is_json { Weights::Index(model.to_path_buf()) } else { Weights::Single(model.to_path_buf()) }))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FrontendError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FrontendError::io(path, e)),
    }
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, FrontendError> {
    String::from_utf8(bytes).map_err(|_| FrontendError::config(path, "(top level)", "not valid UTF-8"))
}

/// The shard files an index names, in first-seen order, each with the (stored) tensor names it should hold.
/// Shards holding only skipped tensors are left out.
fn read_index(index: &Path) -> Result<Vec<(String, Vec<String>)>, FrontendError> {
    let text = std::fs::read(index).map_err(|e| FrontendError::io(index, e))?;
    let bad = |msg: String| FrontendError::Safetensors { path: index.to_path_buf(), tensor: None, msg };
    let v: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no 'weight_map' object (tensor name -> shard file)".into()))?;
    let mut shards: Vec<(String, Vec<String>)> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("weight_map['{name}'] is not a file name: {file}")))?;
        if canonical_name(name).is_none() {
            continue;
        }
        match shards.iter_mut().find(|(f, _)| f == file) {
            Some((_, names)) => names.push(name.clone()),
            None => shards.push((file.to_string(), vec![name.clone()])),
        }
    }
    Ok(shards)
}

impl Checkpoint {
    /// MODEL: a .safetensors file (config.json, generation_config.json, tokenizer.json looked up in its folder), a
    /// folder (model.safetensors or model.safetensors.index.json inside), or a model.safetensors.index.json path.
    /// `max_context`: the --max-context flag (None = the model's max_position_embeddings).
    pub fn open(model: &Path, max_context: Option<usize>) -> Result<Checkpoint, FrontendError> {
        if max_context == Some(0) {
            return Err(FrontendError::MaxContext);
        }
        let (dir, weights) = locate(model)?;

        let config_path = dir.join("config.json");
        let config_json = match read_optional(&config_path)? {
            Some(b) => utf8(&config_path, b)?,
            None => {
                return Err(FrontendError::NotFound {
                    what: format!("no config.json beside the weights (looked for {})", config_path.display()),
                    path: config_path,
                })
            }
        };
        let gen_path = dir.join("generation_config.json");
        let generation_config_json = read_optional(&gen_path)?.map(|b| utf8(&gen_path, b)).transpose()?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read_optional(&tokenizer_path)?;
        let mut inputs = vec![model.to_path_buf(), config_path.clone()];
        inputs.extend(generation_config_json.as_ref().map(|_| gen_path.clone()));
        inputs.extend(tokenizer_json.as_ref().map(|_| tokenizer_path.clone()));
        let spec = config::parse(
            &config_path,
            &config_json,
            generation_config_json.as_deref().map(|text| config::GenerationConfig { path: &gen_path, text }),
            max_context,
        )?;
        let chat = chat::read(&dir, &spec.eos_token_ids, &mut inputs)?;

        let mut ck = Checkpoint {
            spec,
            source: model.to_path_buf(),
            config_json,
            generation_config_json,
            tokenizer_json,
            chat,
            shards: Vec::new(),
            tensors: HashMap::new(),
            unsupported: HashMap::new(),
            searched: String::new(),
            total_bytes: 0,
            inputs,
        };
        match weights {
            Weights::Single(path) => {
                ck.searched = path.display().to_string();
                ck.add_shard(&path, None)?;
            }
            Weights::Index(index) => {
                ck.inputs.push(index.clone());
                let shards = read_index(&index)?;
                let files: Vec<&str> = shards.iter().map(|(f, _)| f.as_str()).collect();
                ck.searched = format!("{} (shards: {})", index.display(), files.join(", "));
                let base = index.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
                for (file, names) in &shards {
                    let path = base.join(file);
                    if !path.is_file() {
                        return Err(FrontendError::MissingShard { index: index.clone(), shard: file.clone(), path });
                    }
                    ck.add_shard(&path, Some((&index, names)))?;
                }
            }
        }

        let mut total = 0u64;
        for (name, shape) in text_model_tensors(&ck.spec) {
            total += ck.require(&name, &shape)?.byte_len() as u64;
        }
        ck.total_bytes = total;
        Ok(ck)
    }

    /// Map one safetensors file and index its tensors. `listed`: the index and the names its weight_map puts here.
    fn add_shard(&mut self, path: &Path, listed: Option<(&Path, &[String])>) -> Result<(), FrontendError> {
        let (shard, entries) = safetensors::load(path)?;
        self.inputs.push(path.to_path_buf());
        let idx = self.shards.len();
        if let Some((index, names)) = listed {
            if let Some(missing) = names.iter().find(|n| !entries.iter().any(|e| &e.stored == *n)) {
                return Err(FrontendError::Safetensors {
                    path: index.to_path_buf(),
                    tensor: Some(missing.clone()),
                    msg: format!("weight_map puts tensor '{missing}' in {}, which has no such tensor", path.display()),
                });
            }
        }
        for e in entries {
            let previous = self
                .tensors
                .get(&e.canonical)
                .map(|t| (t.shard, t.stored.clone()))
                .or_else(|| self.unsupported.get(&e.canonical).map(|(s, n, _)| (*s, n.clone())));
            if let Some((s, stored)) = previous {
                let other = if s == idx { path } else { &self.shards[s].path };
                return Err(FrontendError::Safetensors {
                    path: path.to_path_buf(),
                    tensor: Some(e.stored.clone()),
                    msg: format!(
                        "tensor '{}' is stored twice: as '{}' here and as '{stored}' in {}",
                        e.canonical,
                        e.stored,
                        other.display()
                    ),
                });
            }
            match e.dtype {
                Ok(dtype) => {
                    let t = TensorRef {
                        name: e.canonical.clone(),
                        dtype,
                        shape: e.shape,
                        stored: e.stored,
                        shard: idx,
                        begin: e.begin,
                        end: e.end,
                    };
                    self.tensors.insert(e.canonical, t);
                }
                Err(dtype) => {
                    self.unsupported.insert(e.canonical, (idx, e.stored, dtype));
                }
            }
        }
        self.shards.push(shard);
        Ok(())
    }

    /// Every file this checkpoint was read from (the path given, config, generation config, tokenizer, index,
    /// shards): an output may not be any of them.
    pub fn input_files(&self) -> Vec<&Path> {
        self.inputs.iter().map(PathBuf::as_path).collect()
    }

    /// The tensor with this canonical name, checked to have exactly `shape`.
    pub fn require(&self, name: &str, shape: &[usize]) -> Result<&TensorRef, FrontendError> {
        match self.tensors.get(name) {
            Some(t) if t.shape == shape => Ok(t),
            Some(t) => Err(FrontendError::ShapeMismatch {
                path: self.shards[t.shard].path.clone(),
                name: name.to_string(),
                stored: (t.stored != t.name).then(|| t.stored.clone()),
                actual: t.shape.clone(),
                expected: shape.to_vec(),
            }),
            None => match self.unsupported.get(name) {
                Some((shard, stored, dtype)) => Err(FrontendError::UnsupportedDtype {
                    path: self.shards[*shard].path.clone(),
                    name: stored.clone(),
                    dtype: dtype.clone(),
                }),
                None => Err(FrontendError::MissingTensor { name: name.to_string(), searched: self.searched.clone() }),
            },
        }
    }

    pub fn get(&self, name: &str) -> Option<&TensorRef> {
        self.tensors.get(name)
    }

    /// Every indexed tensor (canonical names), in no particular order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorRef> {
        self.tensors.values()
    }

    /// Raw little-endian bytes of the tensor (a slice of the mmap).
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.shards[t.shard].map[t.begin..t.end]
    }

    /// Drop the tensor's pages from this process's resident set (MADV_DONTNEED on the whole pages inside its byte
    /// range). The mapping is read-only and file-backed, so a later read simply faults the data back in.
    pub fn release(&self, t: &TensorRef) {
        self.release_range(t, 0, t.end - t.begin);
    }

    /// Like [`Self::release`], for the bytes `from..to` of the tensor only (a large tensor is converted in
    /// pieces, and each piece is released when done).
    pub fn release_range(&self, t: &TensorRef, from: usize, to: usize) {
        let page = page_size();
        let start = (t.begin + from).div_ceil(page) * page;
        let end = (t.begin + to.min(t.end - t.begin)) / page * page;
        if end > start {
            // SAFETY: the map is a read-only file mapping, never written through: after MADV_DONTNEED the pages
            // refault from the file with the same contents, so outstanding slices stay valid.
            let r = unsafe {
                self.shards[t.shard].map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
            // Only a hint: failure costs memory, not correctness.
            let _ = r;
        }
    }

    /// Sum of the bytes of the tensors the text model uses (each once).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests;
