//! Kubernetes-style label selectors (`matchLabels` and `matchExpressions`),
//! used by pools, L2 advertisements and BGP peers.

use std::collections::BTreeMap;
use std::fmt;

/// An operator of a label selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorOp {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the label is compared.
    pub op: SelectorOp,
    /// The values for `In` and `NotIn` (empty otherwise).
    pub values: Vec<String>,
}

/// A label selector; all of its terms must match. An empty selector matches
/// everything, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Exact key/value pairs.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.op {
                    SelectorOp::In => got.is_some_and(|v| r.values.contains(v)),
                    SelectorOp::NotIn => got.is_none_or(|v| !r.values.contains(v)),
                    SelectorOp::Exists => got.is_some(),
                    SelectorOp::DoesNotExist => got.is_none(),
                }
            })
    }

    /// Whether the selector has no term (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            terms.push(match r.op {
                SelectorOp::In => format!("{} in ({})", r.key, r.values.join(",")),
                SelectorOp::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                SelectorOp::Exists => r.key.clone(),
                SelectorOp::DoesNotExist => format!("!{}", r.key),
            });
        }
        if terms.is_empty() {
            f.write_str("<everything>")
        } else {
            f.write_str(&terms.join(","))
        }
    }
}

/// Checks a label key against Kubernetes' rules (optional DNS prefix, a
/// name of at most 63 characters); returns what is wrong.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns_label) {
            return Err(format!("label key {key:?} has an invalid prefix; it must be a DNS subdomain like example.com"));
        }
    }
    check_label_value(name)
        .and_then(|_| if name.is_empty() { Err(String::new()) } else { Ok(()) })
        .map_err(|_| format!("label key {key:?} is invalid: the name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"))
}

/// Checks a label value (may be empty; at most 63 characters of `[A-Za-z0-9-_.]`,
/// alphanumeric at both ends).
pub fn check_label_value(value: &str) -> Result<(), String> {
    let ok = value.is_empty()
        || value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("label value {value:?} is invalid: at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends"))
    }
}

/// Whether `s` is a lower-case DNS label (RFC 1123): 1-63 of `[a-z0-9-]`,
/// alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching_table() {
        let sel = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![
                Requirement {
                    key: "tier".into(),
                    op: SelectorOp::In,
                    values: vec!["a".into(), "b".into()],
                },
                Requirement {
                    key: "env".into(),
                    op: SelectorOp::NotIn,
                    values: vec!["dev".into()],
                },
                Requirement {
                    key: "zone".into(),
                    op: SelectorOp::Exists,
                    values: vec![],
                },
                Requirement {
                    key: "legacy".into(),
                    op: SelectorOp::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        let yes = labels(&[("app", "web"), ("tier", "a"), ("zone", "z1")]);
        assert!(sel.matches(&yes));
        let mut no = yes.clone();
        no.insert("env".into(), "dev".into());
        assert!(!sel.matches(&no));
        let mut no = yes.clone();
        no.insert("legacy".into(), "".into());
        assert!(!sel.matches(&no));
        let mut no = yes.clone();
        no.remove("zone");
        assert!(!sel.matches(&no));
        let mut no = yes.clone();
        no.insert("tier".into(), "c".into());
        assert!(!sel.matches(&no));
        assert!(LabelSelector::default().matches(&BTreeMap::new()));
    }

    #[test]
    fn key_and_value_rules() {
        for good in ["app", "kubernetes.io/hostname", "a.b-c_d", "x/y"] {
            assert!(check_label_key(good).is_ok(), "{good}");
        }
        for bad in ["", "-app", "Foo.com/x", "a/", "/x", "bad key"] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2").is_ok());
        assert!(check_label_value("-x").is_err());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }
}
