//! ferrolb's configuration: one schema for the Kubernetes ConfigMap
//! (`ferrolb-system/ferrolb-config`, key `config.yaml`) and the standalone
//! file.
//!
//! [`Config::from_yaml`] is the only way in. It reports every problem at
//! once, each with its path and a hint, and refuses unknown keys. A
//! [`Config`] that comes out is valid and normalised: pool addresses are
//! merged, sorted intervals, defaults are filled in, cross-references
//! resolve.

mod crossref;
mod decode;
pub mod duration;
mod error;
mod model;
mod parse;
pub mod selector;
mod summary;
mod value;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use selector::LabelSelector;

/// The ConfigMap key that holds the configuration in Kubernetes mode.
pub const CONFIGMAP_KEY: &str = "config.yaml";

/// Input larger than this is refused before parsing, so that a bad file
/// cannot exhaust memory.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("{path}: {errors}")]
    Invalid {
        /// The file.
        path: String,
        /// Every problem.
        errors: ConfigErrors,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, LoadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: shown.clone(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|errors| LoadError::Invalid {
            path: shown,
            errors,
        })
    }

    /// Reads a configuration file, or a ConfigMap manifest holding one
    /// under [`CONFIGMAP_KEY`] (such as `deploy/config.yaml`), so the
    /// manifest a user is about to apply can be checked offline.
    pub fn load_file_or_configmap(path: &std::path::Path) -> Result<Config, LoadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: shown.clone(),
            source,
        })?;
        let text = match configmap_data(&text) {
            Some(Ok(inner)) => inner,
            Some(Err(message)) => {
                return Err(LoadError::Invalid {
                    path: shown,
                    errors: ConfigErrors(vec![ConfigError {
                        path: "data".into(),
                        message,
                    }]),
                })
            }
            None => text,
        };
        Config::from_yaml(&text).map_err(|errors| LoadError::Invalid {
            path: shown,
            errors,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let fail = |message: String| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message,
            }])
        };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(fail(format!(
                "the configuration is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                text.len()
            )));
        }
        let root = value::parse_yaml(text).map_err(|e| fail(format!("not valid YAML: {e}")))?;
        let mut ctx = decode::Ctx::default();
        let draft = parse::config(&mut ctx, &root);
        crossref::check(&mut ctx, &draft);
        if ctx.errors.is_empty() {
            Ok(draft.into_config())
        } else {
            Err(ConfigErrors(ctx.errors))
        }
    }
}

/// The configuration inside a ConfigMap manifest: `None` when `text` is
/// not a ConfigMap, an error when it is one without [`CONFIGMAP_KEY`].
fn configmap_data(text: &str) -> Option<Result<String, String>> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        kind: Option<String>,
        data: Option<std::collections::BTreeMap<String, String>>,
    }
    let m: Manifest = serde_saphyr::from_str(text).ok()?;
    if m.kind.as_deref() != Some("ConfigMap") {
        return None;
    }
    Some(
        m.data
            .and_then(|mut d| d.remove(CONFIGMAP_KEY))
            .ok_or_else(|| format!("this ConfigMap has no data key {CONFIGMAP_KEY:?}, where ferrolb reads its configuration")),
    )
}
