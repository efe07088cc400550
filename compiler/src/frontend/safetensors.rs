//! A safetensors reader: 8-byte little-endian header length N, N bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data section (offsets are
//! relative to byte 8 + N). The file is memory-mapped; nothing is copied.

use super::error::FrontendError;
use super::names::canonical_name;
use memmap2::Mmap;
use serde_json::{Map, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use unicorn_ir::quant::SourceDType;

/// One mapped safetensors file.
#[derive(Debug)]
pub(crate) struct Shard {
    pub path: PathBuf,
    pub map: Mmap,
}

/// A header entry of a tensor the text model may use (skipped tensors never become entries).
#[derive(Debug)]
pub(crate) struct Entry {
    /// The name in the file.
    pub stored: String,
    pub canonical: String,
    /// The element type, or the dtype string when it is not one the frontend reads.
    pub dtype: Result<SourceDType, String>,
    pub shape: Vec<usize>,
    /// Byte range in the mapped file (absolute, header included).
    pub begin: usize,
    pub end: usize,
}

pub(crate) fn parse_dtype(s: &str) -> Option<SourceDType> {
    match s {
        "F32" => Some(SourceDType::F32),
        "F16" => Some(SourceDType::F16),
        "BF16" => Some(SourceDType::Bf16),
        _ => None,
    }
}

fn shape_str(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Map `path` and read its header. Entries come in header order.
pub(crate) fn load(path: &Path) -> Result<(Shard, Vec<Entry>), FrontendError> {
    let file = File::open(path).map_err(|e| FrontendError::io(path, e))?;
    let len = file.metadata().map_err(|e| FrontendError::io(path, e))?.len();
    let err = |tensor: Option<&str>, msg: String| FrontendError::Safetensors {
        path: path.to_path_buf(),
        tensor: tensor.map(str::to_string),
        msg,
    };
    if len < 8 {
        return Err(err(None, format!("truncated: {len} bytes, shorter than the 8-byte header length")));
    }
    // SAFETY: the mapping is read-only; a checkpoint modified while we compile is outside what we promise.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| FrontendError::io(path, e))?;
    let len = map.len();
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    let header_end = n.checked_add(8).filter(|&e| e <= len as u64).ok_or_else(|| {
        err(None, format!("truncated: the header claims {n} bytes of JSON but the file has only {len} bytes"))
    })? as usize;
    let header: Map<String, Value> = match serde_json::from_slice::<Value>(&map[8..header_end]) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(err(None, "header is not a JSON object".into())),
        Err(e) => return Err(err(None, format!("header is not valid JSON ({e})"))),
    };
    let data_len = len - header_end;
    let mut entries = Vec::new();
    for (stored, v) in &header {
        if stored == "__metadata__" {
            continue;
        }
        let Some(canonical) = canonical_name(stored) else { continue };
        let terr = |msg: String| err(Some(stored), format!("tensor '{stored}': {msg}"));
        let obj = v.as_object().ok_or_else(|| terr("header entry is not a JSON object".into()))?;
        let dtype_str = obj
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| terr("header entry has no string 'dtype'".into()))?;
        let shape = obj
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| terr("header entry has no 'shape' list of non-negative integers".into()))?;
        let offsets = obj
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<_>>>())
            .ok_or_else(|| terr("header entry has no 'data_offsets' pair of non-negative integers".into()))?;
        let (b, e) = (offsets[0], offsets[1]);
        if b > e {
            return Err(terr(format!("data_offsets [{b}, {e}] begin after they end")));
        }
        if e > data_len as u64 {
            return Err(terr(format!(
                "data_offsets [{b}, {e}] run past the end of the data section ({data_len} bytes): the file is \
                 truncated or its header lies"
            )));
        }
        let dtype = parse_dtype(dtype_str).ok_or_else(|| dtype_str.to_string());
        if let Ok(d) = dtype {
            let need = shape.iter().try_fold(d.size() as u64, |acc, &x| acc.checked_mul(x as u64));
            if need != Some(e - b) {
                let need = need.map_or("more than 2^64".to_string(), |n| n.to_string());
                return Err(terr(format!(
                    "data_offsets [{b}, {e}] hold {} bytes but {dtype_str} {} needs {need}",
                    e - b,
                    shape_str(&shape)
                )));
            }
        }
        entries.push(Entry {
            stored: stored.clone(),
            canonical,
            dtype,
            shape,
            begin: header_end + b as usize,
            end: header_end + e as usize,
        });
    }
    Ok((Shard { path: path.to_path_buf(), map }, entries))
}

/// Test helpers: writers of synthetic safetensors files.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::Path;

    /// One tensor to write: name, dtype string, shape. Data is a deterministic byte pattern of the right size
    /// (dtypes other than F32/F16/BF16 are written with 1 byte per element).
    pub struct T<'a>(pub &'a str, pub &'a str, pub Vec<usize>);

    fn elem_size(dtype: &str) -> usize {
        match dtype {
            "F32" | "I32" => 4,
            "F16" | "BF16" | "I16" => 2,
            "F64" | "I64" => 8,
            _ => 1,
        }
    }

    /// The header JSON and data section for `tensors`, packed back to back in order.
    pub fn build(tensors: &[T]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut data = Vec::new();
        for T(name, dtype, shape) in tensors {
            let n = shape.iter().product::<usize>() * elem_size(dtype);
            let begin = data.len();
            data.extend((0..n).map(|i| (i % 251) as u8));
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        (header, data)
    }

    /// Write a file from a header (serialized as is) and a data section.
    pub fn write_raw(path: &Path, header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) {
        let h = serde_json::to_vec(header).unwrap();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    pub fn write(path: &Path, tensors: &[T]) {
        let (h, d) = build(tensors);
        write_raw(path, &h, &d);
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn load_err(path: &Path) -> String {
        load(path).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn reads_entries_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        write(
            &p,
            &[
                T("language_model.model.norm.weight", "BF16", vec![4]),
                T("vision_tower.x", "F64", vec![3]),
                T("model.embed_tokens.weight", "F32", vec![2, 3]),
                T("model.ids", "I64", vec![2]),
            ],
        );
        let (shard, entries) = load(&p).unwrap();
        assert_eq!(entries.len(), 3, "the vision tensor is skipped");
        let norm = entries.iter().find(|e| e.canonical == "model.norm.weight").unwrap();
        assert_eq!(norm.stored, "language_model.model.norm.weight");
        assert_eq!(norm.dtype, Ok(SourceDType::Bf16));
        assert_eq!(&shard.map[norm.begin..norm.end], &[0, 1, 2, 3, 4, 5, 6, 7]);
        let emb = entries.iter().find(|e| e.canonical == "model.embed_tokens.weight").unwrap();
        assert_eq!((emb.shape.clone(), emb.end - emb.begin), (vec![2, 3], 24));
        let ids = entries.iter().find(|e| e.canonical == "model.ids").unwrap();
        assert_eq!(ids.dtype, Err("I64".to_string()));
    }

    #[test]
    fn truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short.safetensors");
        std::fs::write(&p, [1, 2, 3]).unwrap();
        let e = load_err(&p);
        assert!(e.contains("short.safetensors") && e.contains("truncated"), "{e}");

        std::fs::write(&p, [0u8; 0]).unwrap();
        assert!(load_err(&p).contains("truncated"));

        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&p, &bytes).unwrap();
        let e = load_err(&p);
        assert!(e.contains("short.safetensors: truncated") && e.contains("1000"), "{e}");

        // A whole file cut short inside the data section: the offsets run past the end.
        let full = dir.path().join("full.safetensors");
        write(&full, &[T("model.a", "F32", vec![8]), T("model.b", "F32", vec![8])]);
        let bytes = std::fs::read(&full).unwrap();
        std::fs::write(&full, &bytes[..bytes.len() - 5]).unwrap();
        let e = load_err(&full);
        assert!(e.contains("full.safetensors") && e.contains("tensor 'model.b'") && e.contains("truncated"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn header_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        let mut bytes = 5u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{nope");
        std::fs::write(&p, &bytes).unwrap();
        let e = load_err(&p);
        assert!(e.contains("bad.safetensors") && e.contains("not valid JSON"), "{e}");
        assert!(!e.contains('\n'));

        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"[]");
        std::fs::write(&p, &bytes).unwrap();
        assert!(load_err(&p).contains("not a JSON object"));
    }

    #[test]
    fn header_that_lies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lies.safetensors");
        let (mut h, d) = build(&[T("model.w", "F16", vec![2, 4])]);

        // size not matching dtype x shape
        h["model.w"]["shape"] = serde_json::json!([2, 5]);
        write_raw(&p, &h, &d);
        let e = load_err(&p);
        assert!(e.contains("lies.safetensors") && e.contains("tensor 'model.w'"), "{e}");
        assert!(e.contains("hold 16 bytes but F16 [2, 5] needs 20"), "{e}");

        // offsets out of range
        h["model.w"]["shape"] = serde_json::json!([2, 4]);
        h["model.w"]["data_offsets"] = serde_json::json!([8, 24]);
        write_raw(&p, &h, &d);
        let e = load_err(&p);
        assert!(e.contains("tensor 'model.w'") && e.contains("[8, 24] run past the end"), "{e}");

        // begin > end
        h["model.w"]["data_offsets"] = serde_json::json!([16, 0]);
        write_raw(&p, &h, &d);
        let e = load_err(&p);
        assert!(e.contains("tensor 'model.w'") && e.contains("begin after they end"), "{e}");

        // malformed entry
        h["model.w"]["data_offsets"] = serde_json::json!([0]);
        write_raw(&p, &h, &d);
        assert!(load_err(&p).contains("data_offsets"));

        // a lying header on a skipped tensor is not our business
        let (mut h, d) = build(&[T("model.w", "F16", vec![2, 4]), T("vision_tower.x", "F32", vec![1])]);
        h["vision_tower.x"]["data_offsets"] = serde_json::json!([0, 99999]);
        write_raw(&p, &h, &d);
        assert_eq!(load(&p).unwrap().1.len(), 1);
    }
}
