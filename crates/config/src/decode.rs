//! Reading a [`Value`] tree into typed fields while collecting every error
//! with its path, so an operator sees all problems in one run.

use crate::duration::parse_duration;
use crate::error::ConfigError;
use crate::value::Value;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A value together with the path that leads to it.
#[derive(Clone, Copy)]
pub(crate) struct Field<'a> {
    pub value: &'a Value,
    pub path: &'a Path,
}

/// A dotted path such as `pools[1].addresses[0]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Path(String);

impl Path {
    pub fn root() -> Path {
        Path(String::new())
    }
    pub fn key(&self, key: &str) -> Path {
        if self.0.is_empty() {
            Path(key.to_string())
        } else {
            Path(format!("{}.{key}", self.0))
        }
    }
    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Collects errors while decoding.
#[derive(Default)]
pub(crate) struct Ctx {
    pub errors: Vec<ConfigError>,
}

/// A mapping whose keys were checked against the allowed set.
pub(crate) struct Obj<'a> {
    entries: &'a [(String, Value)],
    path: Path,
    paths: Vec<Path>,
}

impl<'a> Obj<'a> {
    /// The path of the mapping itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The field `key`, if present (a `null` value counts as absent).
    pub fn get(&self, key: &str) -> Option<Field<'_>> {
        self.entries
            .iter()
            .position(|(k, v)| k == key && *v != Value::Null)
            .map(|i| Field {
                value: &self.entries[i].1,
                path: &self.paths[i],
            })
    }

    /// The field `key`, reporting it as missing when absent.
    pub fn require(&self, ctx: &mut Ctx, key: &str, hint: &str) -> Option<Field<'_>> {
        let f = self.get(key);
        if f.is_none() {
            ctx.error(
                &self.path.key(key),
                format!("is required but missing; {hint}"),
            );
        }
        f
    }
}

impl Ctx {
    /// Records an error at `path`.
    pub fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.as_str().to_string(),
            message: message.into(),
        });
    }

    fn wrong_type(&mut self, f: Field<'_>, expected: &str) {
        self.error(
            f.path,
            format!("expected {expected}, found {}", f.value.kind()),
        );
    }

    /// Opens a mapping, reporting keys outside `allowed` (with a suggestion
    /// when one is close) and duplicate keys.
    pub fn object<'a>(&mut self, f: Field<'a>, allowed: &[&str]) -> Option<Obj<'a>> {
        let Value::Map(entries) = f.value else {
            self.wrong_type(f, "a mapping");
            return None;
        };
        let paths: Vec<Path> = entries.iter().map(|(k, _)| f.path.key(k)).collect();
        for (i, (k, _)) in entries.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                let hint = match closest(k, allowed) {
                    Some(s) => format!("unknown key; did you mean {s:?}?"),
                    None => format!("unknown key; allowed keys here: {}", allowed.join(", ")),
                };
                self.error(&paths[i], hint);
            } else if entries[..i].iter().any(|(other, _)| other == k) {
                self.error(&paths[i], "appears twice; keep one");
            }
        }
        Some(Obj {
            entries,
            path: f.path.clone(),
            paths,
        })
    }

    /// Decodes a list, each element with its own path. `null` is an empty list;
    /// a scalar where a list is expected is an error.
    pub fn list<'a, T>(
        &mut self,
        f: Field<'a>,
        mut each: impl FnMut(&mut Ctx, Field<'_>) -> Option<T>,
    ) -> Vec<T> {
        match f.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let path = f.path.index(i);
                    each(
                        self,
                        Field {
                            value: v,
                            path: &path,
                        },
                    )
                })
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.wrong_type(f, "a list");
                Vec::new()
            }
        }
    }

    /// A string.
    pub fn string(&mut self, f: Field<'_>) -> Option<String> {
        match f.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.wrong_type(f, "a string");
                None
            }
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, f: Field<'_>) -> Vec<String> {
        self.list(f, |ctx, f| ctx.string(f))
    }

    /// A boolean.
    pub fn boolean(&mut self, f: Field<'_>) -> Option<bool> {
        match f.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(f, "true or false");
                None
            }
        }
    }

    /// A whole number within `[min, max]`.
    pub fn uint<T>(&mut self, f: Field<'_>, min: u64, max: u64) -> Option<T>
    where
        T: TryFrom<u64>,
    {
        let n = match f.value {
            Value::Int(i) => *i,
            Value::Str(s) if s.trim().parse::<i128>().is_ok() => s.trim().parse().ok()?,
            _ => {
                self.wrong_type(f, "a whole number");
                return None;
            }
        };
        if n < min as i128 || n > max as i128 {
            self.error(
                f.path,
                format!("{n} is out of range; allowed: {min} to {max}"),
            );
            return None;
        }
        T::try_from(n as u64).ok()
    }

    /// A duration written with a unit (`200ms`, `9s`).
    pub fn duration(&mut self, f: Field<'_>) -> Option<Duration> {
        match f.value {
            Value::Str(s) => parse_duration(s).map_err(|e| self.error(f.path, e)).ok(),
            Value::Int(i) => {
                self.error(
                    f.path,
                    format!("{i} has no unit; write it like {i}s or {i}ms"),
                );
                None
            }
            _ => {
                self.wrong_type(f, "a duration like 200ms or 9s");
                None
            }
        }
    }

    /// Any type parsed from a string with `FromStr`; its error message is kept.
    pub fn parse<T>(&mut self, f: Field<'_>) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let text = self.string(f)?;
        text.parse()
            .map_err(|e: T::Err| self.error(f.path, e.to_string()))
            .ok()
    }
}

/// The allowed key closest to `key`, if it is close enough to be a typo.
fn closest<'s>(key: &str, allowed: &[&'s str]) -> Option<&'s str> {
    allowed
        .iter()
        .map(|a| (edit_distance(&key.to_lowercase(), &a.to_lowercase()), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let allowed = ["autoAssign", "avoidBuggyIPs", "addresses", "name"];
        assert_eq!(closest("autoAsign", &allowed), Some("autoAssign"));
        assert_eq!(closest("avoidbuggyips", &allowed), Some("avoidBuggyIPs"));
        assert_eq!(closest("adresses", &allowed), Some("addresses"));
        assert_eq!(closest("colour", &allowed), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
