//! Typed access to one JSON object of a config, with errors naming the field; and parsing a file's text.

use crate::frontend::error::FrontendError;
use serde_json::{Map, Value};
use std::path::Path;

/// One JSON object of a config, read with field names for errors (`prefix` is "text_config." when nested).
pub(super) struct Obj<'a> {
    pub(super) map: &'a Map<String, Value>,
    pub(super) prefix: &'static str,
    pub(super) path: &'a Path,
}

pub(super) type R<T> = Result<T, FrontendError>;

impl<'a> Obj<'a> {
    pub(super) fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn err(&self, key: &str, msg: impl Into<String>) -> FrontendError {
        FrontendError::config(self.path, self.field(key), msg)
    }

    /// The value of `key` unless absent or null.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn uint_of(&self, key: &str, v: &Value) -> R<usize> {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e18).map(|f| f as u64))
            .and_then(|u| usize::try_from(u).ok())
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer, found {v}")))
    }

    pub(super) fn uint(&self, key: &str, default: usize) -> R<usize> {
        self.get(key).map_or(Ok(default), |v| self.uint_of(key, v))
    }

    /// absent -> `default`; null -> None.
    pub(super) fn opt_uint(&self, key: &str, default: Option<usize>) -> R<Option<usize>> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => self.uint_of(key, v).map(Some),
        }
    }

    pub(super) fn float(&self, key: &str, default: f64) -> R<f64> {
        self.opt_float(key).map(|f| f.unwrap_or(default))
    }

    pub(super) fn opt_float(&self, key: &str) -> R<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, found {v}"))))
            .transpose()
    }

    pub(super) fn boolean(&self, key: &str, default: bool) -> R<bool> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, found {v}")))
        })
    }

    pub(super) fn string(&self, key: &str, default: &'a str) -> R<&'a str> {
        self.get(key)
            .map_or(Ok(default), |v| v.as_str().ok_or_else(|| self.err(key, format!("expected a string, found {v}"))))
    }

    pub(super) fn object(&self, key: &str) -> R<Option<&'a Map<String, Value>>> {
        self.get(key)
            .map(|v| v.as_object().ok_or_else(|| self.err(key, format!("expected a JSON object, found {v}"))))
            .transpose()
    }

    /// `token_id` fields: an int, a list of ints or null.
    pub(super) fn token_ids(&self, key: &str) -> R<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .ok_or_else(|| self.err(key, format!("expected a token id, found {v}")))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().filter(|v| !v.is_null()).map(one).collect(),
            Some(v) => one(v).map(|id| vec![id]),
        }
    }
}

pub(super) fn parse_json(path: &Path, text: &str) -> R<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(FrontendError::config(path, "(top level)", "not a JSON object")),
        Err(e) => Err(FrontendError::config(path, "(top level)", format!("not valid JSON ({e})"))),
    }
}
