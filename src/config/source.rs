//! Where a key's value comes from: the first of its variables that is set,
//! else `config.json`, else the table's default; and what an error says
//! about it (the variable, or the file and the key).

use std::path::Path;

use serde_json::{Map, Value};

use super::keys::{Fallback, Key, KEYS, SILENT_KEYS};
use super::{Config, ConfigError};

/// The config file (if one was read) and the environment.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub root: Option<&'a Value>,
    /// Already without empty values (Docker's `-e NAME=` is a common slip).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// A value as found, before its key parses it.
#[derive(Clone, Copy)]
pub(super) enum Raw<'a> {
    /// From a variable, or the table's default (written the same way).
    Text(&'a str),
    /// From the file.
    Json(&'a Value),
}

/// Why a value is refused; [`Source::apply`] adds where it came from.
pub(super) struct Bad {
    pub why: String,
    /// The part of the value at fault, named under the key
    /// (`execution.environment.set.NAME`).
    pub at: Option<String>,
}

impl From<String> for Bad {
    fn from(why: String) -> Self {
        Bad { why, at: None }
    }
}

enum Origin {
    Env(&'static str),
    File,
    Default,
}

/// Reads and parses `path`; a missing file is `None` unless `explicit`
/// (`--config` named it).
pub(super) fn read_file(path: &Path, explicit: bool) -> Result<Option<Value>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ConfigError::NotJson {
                path: path.to_path_buf(),
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl<'a> Source<'a> {
    /// Sets `key` in `config` from the first of its variables that is set,
    /// else the file, else its default.
    pub fn apply(&self, config: &mut Config, key: &Key) -> Result<(), ConfigError> {
        // Before the variables: a section or group of the wrong type is an
        // error even where a variable overrides the key.
        let file = self.file_value(key)?;
        let env = self.env_value(key.vars);
        let (origin, raw) = match (&env, file, key.default) {
            (Some((var, text)), _, _) => (Origin::Env(var), Raw::Text(text)),
            (None, Some(value), _) => (Origin::File, Raw::Json(value)),
            (None, None, Fallback::Text(text)) => (Origin::Default, Raw::Text(text)),
            (None, None, Fallback::Unset) => return Ok(()),
            (None, None, Fallback::Required) => {
                return Err(ConfigError::Missing {
                    key: key.name,
                    path: self.path.to_path_buf(),
                    env: key.vars.first().copied().unwrap_or_default(),
                })
            }
        };
        (key.set)(config, raw).map_err(|bad| self.invalid(origin, key, bad))
    }

    fn env_value(&self, vars: &[&'static str]) -> Option<(&'static str, String)> {
        vars.iter().find_map(|v| (self.env)(v).map(|val| (*v, val)))
    }

    /// The key's value in the file; null (Go's nil) counts as absent, and so
    /// does `""` where the key says so.
    fn file_value(&self, key: &Key) -> Result<Option<&'a Value>, ConfigError> {
        let Some(mut value) = self.root else {
            return Ok(None);
        };
        for (i, part) in key.name.split('.').enumerate() {
            value = match value {
                Value::Object(m) => match m.get(part) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                Value::Null => return Ok(None),
                other => {
                    return Err(self.file_invalid(
                        parent(key.name, i),
                        format!("expected an object, found {}", kind(other)),
                    ))
                }
            };
        }
        Ok(match value {
            Value::Null => None,
            Value::String(s) if s.is_empty() && key.empty_is_unset => None,
            v => Some(v),
        })
    }

    fn invalid(&self, origin: Origin, key: &Key, bad: Bad) -> ConfigError {
        let (origin, name) = match origin {
            Origin::Env(var) => ("environment".to_string(), var.to_string()),
            Origin::File => (self.path.display().to_string(), key.name.to_string()),
            // A test loads the defaults; this names the culprit if one breaks.
            Origin::Default => ("built-in default".to_string(), key.name.to_string()),
        };
        ConfigError::Invalid {
            origin,
            key: match bad.at {
                Some(at) => format!("{name}.{at}"),
                None => name,
            },
            why: bad.why,
        }
    }

    fn file_invalid(&self, key: &str, why: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.path.display().to_string(),
            key: key.to_string(),
            why,
        }
    }

    /// Warnings for keys the table does not have; errors for sections of
    /// the wrong type.
    pub fn unknown_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let Some(root) = self.root else {
            return Ok(warnings);
        };
        let Value::Object(root) = root else {
            return Err(self.file_invalid(
                "(top level)",
                format!("expected an object, found {}", kind(root)),
            ));
        };
        for (section, value) in root {
            match value {
                _ if !is_group(section) => warnings.push(self.unknown(section)),
                Value::Object(m) => self.unknown_in(section, m, &mut warnings),
                // Accepted as "no mTLS"; `runner` and `execution` are not
                // optional that way.
                Value::Null if section == "tls" => {}
                other => {
                    return Err(self.file_invalid(
                        section,
                        format!("expected an object, found {}", kind(other)),
                    ))
                }
            }
        }
        Ok(warnings)
    }

    /// Recurses only into groups of the table, so no deeper than its keys.
    fn unknown_in(&self, group: &str, map: &Map<String, Value>, warnings: &mut Vec<String>) {
        for (name, value) in map {
            let dotted = format!("{group}.{name}");
            if KEYS.iter().any(|k| k.name == dotted) || SILENT_KEYS.contains(&dotted.as_str()) {
                continue;
            }
            match value {
                Value::Object(m) if is_group(&dotted) => self.unknown_in(&dotted, m, warnings),
                // The wrong type is an error when its keys are read.
                _ if is_group(&dotted) => {}
                _ => warnings.push(self.unknown(&dotted)),
            }
        }
    }

    fn unknown(&self, key: &str) -> String {
        format!("{}: unknown key {key:?} ignored", self.path.display())
    }
}

/// Whether some key of the table lies under `prefix` (`runner`,
/// `runner.registration_retry`).
fn is_group(prefix: &str) -> bool {
    KEYS.iter().any(|k| {
        k.name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The object holding the `i`-th part of a dotted name.
fn parent(name: &str, i: usize) -> &str {
    match i
        .checked_sub(1)
        .and_then(|n| name.match_indices('.').nth(n))
    {
        Some((end, _)) => &name[..end],
        None => "(top level)",
    }
}

impl Raw<'_> {
    pub fn string(self) -> Result<String, Bad> {
        match self {
            Raw::Text(t) => Ok(t.to_string()),
            Raw::Json(Value::String(s)) => Ok(s.clone()),
            Raw::Json(other) => Err(format!("expected a string, found {}", describe(other)).into()),
        }
    }

    pub fn uint(self) -> Result<u64, Bad> {
        match self {
            Raw::Text(t) => t
                .trim()
                .parse()
                .map_err(|_| format!("{t:?} is not a non-negative whole number").into()),
            Raw::Json(v) => v.as_u64().ok_or_else(|| {
                format!(
                    "expected a non-negative whole number, found {}",
                    describe(v)
                )
                .into()
            }),
        }
    }

    pub fn int(self) -> Result<i64, Bad> {
        match self {
            Raw::Text(t) => t
                .trim()
                .parse()
                .map_err(|_| format!("{t:?} is not a whole number").into()),
            Raw::Json(v) => v
                .as_i64()
                .ok_or_else(|| format!("expected a whole number, found {}", describe(v)).into()),
        }
    }

    pub fn boolean(self) -> Result<bool, Bad> {
        match self {
            Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(format!("{t:?} is not true or false").into()),
            },
            Raw::Json(Value::Bool(b)) => Ok(*b),
            Raw::Json(other) => {
                Err(format!("expected true or false, found {}", describe(other)).into())
            }
        }
    }

    /// A JSON array of strings, or comma-separated text; blanks dropped.
    pub fn list(self) -> Result<Vec<String>, Bad> {
        match self {
            Raw::Text(t) => Ok(t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            Raw::Json(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    other => {
                        Err(format!("expected variable names, found {}", describe(other)).into())
                    }
                })
                .collect(),
            Raw::Json(other) => {
                Err(format!("expected an array of names, found {}", kind(other)).into())
            }
        }
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn describe(v: &Value) -> String {
    let mut text = v.to_string();
    if text.len() > 60 {
        // On a character boundary: the file may hold any UTF-8.
        let end = (0..=57)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(end);
        text.push_str("...");
    }
    format!("{} {text}", kind(v))
}
