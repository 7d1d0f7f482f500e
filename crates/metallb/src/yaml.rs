//! A small YAML writer for the converted configuration: block style, keys
//! in the order they were put, strings quoted unless plainly safe. The
//! output is read back by ferrolb's own parser before it is printed.

/// An ordered YAML tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    /// A string.
    Str(String),
    /// A whole number.
    Int(i128),
    /// A boolean.
    Bool(bool),
    /// A sequence.
    List(Vec<Yaml>),
    /// A mapping, keys in insertion order.
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// An empty mapping.
    pub fn map() -> Yaml {
        Yaml::Map(Vec::new())
    }

    /// Adds `key: value` to a mapping (no effect on other kinds).
    pub fn put(&mut self, key: &str, value: Yaml) {
        if let Yaml::Map(m) = self {
            m.push((key.to_string(), value));
        }
    }

    /// A list of strings.
    pub fn strs<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Yaml {
        Yaml::List(items.into_iter().map(|s| Yaml::Str(s.into())).collect())
    }

    fn is_empty_collection(&self) -> bool {
        matches!(self, Yaml::List(l) if l.is_empty())
            || matches!(self, Yaml::Map(m) if m.is_empty())
    }
}

/// Whether `s` reads back as the same string when written without quotes.
fn plain(s: &str) -> bool {
    const WORDS: [&str; 12] = [
        "true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", "nan", "inf",
    ];
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

/// `s` as a YAML scalar: plain when safe, else double-quoted with JSON's
/// escapes (a subset of YAML's).
fn scalar(s: &str) -> String {
    if plain(s) {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

fn key(k: &str) -> String {
    scalar(k)
}

fn inline(v: &Yaml) -> Option<String> {
    match v {
        Yaml::Str(s) => Some(scalar(s)),
        Yaml::Int(i) => Some(i.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::List(l) if l.is_empty() => Some("[]".into()),
        Yaml::Map(m) if m.is_empty() => Some("{}".into()),
        // Short lists of scalars read best on one line.
        Yaml::List(l)
            if l.len() <= 8 && l.iter().all(|i| matches!(i, Yaml::Str(_) | Yaml::Int(_))) =>
        {
            let items: Vec<String> = l.iter().filter_map(inline).collect();
            let line = format!("[{}]", items.join(", "));
            (line.len() <= 80).then_some(line)
        }
        _ => None,
    }
}

fn write(out: &mut String, v: &Yaml, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Yaml::Map(m) => {
            for (k, v) in m {
                match inline(v) {
                    Some(s) => out.push_str(&format!("{pad}{}: {s}\n", key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        let deeper = if matches!(v, Yaml::List(_)) {
                            indent
                        } else {
                            indent + 2
                        };
                        write(out, v, deeper);
                    }
                }
            }
        }
        Yaml::List(l) => {
            for item in l {
                match (inline(item), item) {
                    (Some(s), _) => out.push_str(&format!("{pad}- {s}\n")),
                    (None, Yaml::Map(_)) => {
                        // The first key on the dash's line, the rest under it.
                        let mut inner = String::new();
                        write(&mut inner, item, indent + 2);
                        let trimmed = &inner[indent + 2..];
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                    (None, _) => {
                        out.push_str(&format!("{pad}-\n"));
                        write(out, item, indent + 2);
                    }
                }
            }
        }
        other => {
            if let Some(s) = inline(other) {
                out.push_str(&format!("{pad}{s}\n"));
            }
        }
    }
}

/// The document text of `v` (a mapping at the top).
pub fn to_string(v: &Yaml) -> String {
    let mut out = String::new();
    if v.is_empty_collection() {
        return "{}\n".into();
    }
    write(&mut out, v, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_that_would_read_back_as_something_else_are_quoted() {
        for (s, want) in [
            ("prod", "prod"),
            ("eth0", "eth0"),
            ("192.0.2.0/24", "\"192.0.2.0/24\""),
            ("65000:100", "\"65000:100\""),
            ("yes", "\"yes\""),
            ("No", "\"No\""),
            ("", "\"\""),
            ("a b", "\"a b\""),
            ("x#y", "\"x#y\""),
            ("-x", "\"-x\""),
            ("tab\there", "\"tab\\there\""),
        ] {
            assert_eq!(scalar(s), want, "{s:?}");
        }
    }

    #[test]
    fn nested_maps_and_lists_are_block_style() {
        let mut pool = Yaml::map();
        pool.put("name", Yaml::Str("prod".into()));
        pool.put("addresses", Yaml::strs(["192.0.2.0/24"]));
        let mut sel = Yaml::map();
        let mut labels = Yaml::map();
        labels.put("app.kubernetes.io/tier", Yaml::Str("web".into()));
        sel.put("matchLabels", labels);
        pool.put("serviceSelector", sel);
        let mut root = Yaml::map();
        root.put("pools", Yaml::List(vec![pool]));
        assert_eq!(
            to_string(&root),
            "pools:\n- name: prod\n  addresses: [\"192.0.2.0/24\"]\n  serviceSelector:\n    matchLabels:\n      app.kubernetes.io/tier: web\n"
        );
    }
}
