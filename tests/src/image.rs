//! Container images as directories, built from the repository's
//! `Dockerfile`: a final stage's `COPY --from=build` files (the static
//! binaries), its `USER`, `ENTRYPOINT` and `CMD`, over the few files its
//! distroless base holds (`/etc/passwd`, `/etc/group`, `/tmp`, a home).
//! What the Dockerfile's final stage does not copy is not there: no shell,
//! no `ip`, no libc.
//!
//! The binaries are this workspace's, linked statically (glibc with
//! `crt-static`, built by `tests/run.sh` for the host's own target triple):
//! the image's build uses musl, which these machines cannot add, and both
//! are static executables that need nothing else from the root filesystem.

use std::path::{Path, PathBuf};

/// One stage of the Dockerfile, as an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The stage name (`speaker`).
    pub stage: String,
    /// The base image reference.
    pub base: String,
    /// `(source in the build stage, path in the image)`.
    pub copies: Vec<(String, String)>,
    /// `USER` as uid and gid (the base's default when absent).
    pub user: (u32, u32),
    /// `ENTRYPOINT` (exec form).
    pub entrypoint: Vec<String>,
    /// `CMD` (exec form).
    pub cmd: Vec<String>,
}

/// Why a Dockerfile stage cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No `FROM ... AS name`.
    #[error("the Dockerfile has no stage {0:?}")]
    NoStage(String),
    /// An instruction the runner cannot reproduce.
    #[error("Dockerfile stage {stage:?}: cannot reproduce {line:?}")]
    Unsupported {
        /// The stage.
        stage: String,
        /// The instruction.
        line: String,
    },
}

fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(rest.trim()).unwrap_or_else(|_| {
        // Shell form: a distroless image has no shell, so it would not run.
        vec!["/bin/sh".into(), "-c".into(), rest.trim().to_string()]
    })
}

/// The lines of a Dockerfile with continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// What the distroless bases' `/etc/passwd` declare: root, nonroot (65532), nobody.
fn base_user(base: &str) -> (u32, u32) {
    if base.ends_with(":nonroot") {
        (65532, 65532)
    } else {
        (0, 0)
    }
}

/// Stage `stage` of the Dockerfile text.
pub fn parse(text: &str, stage: &str) -> Result<Image, ImageError> {
    let mut found: Option<Image> = None;
    for ins in instructions(text) {
        let (op, rest) = ins.split_once(' ').unwrap_or((ins.as_str(), ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            if found.is_some() {
                break;
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [base, as_, name] = words.as_slice() {
                if as_.eq_ignore_ascii_case("as") && *name == stage {
                    found = Some(Image {
                        stage: stage.into(),
                        base: base.to_string(),
                        copies: Vec::new(),
                        user: base_user(base),
                        entrypoint: Vec::new(),
                        cmd: Vec::new(),
                    });
                }
            }
            continue;
        }
        let Some(img) = found.as_mut() else { continue };
        let unsupported = || ImageError::Unsupported {
            stage: stage.into(),
            line: ins.clone(),
        };
        match op.as_str() {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                if !words.iter().any(|w| w.starts_with("--from=")) || paths.len() < 2 {
                    return Err(unsupported());
                }
                let dest = paths[paths.len() - 1];
                for src in &paths[..paths.len() - 1] {
                    let name = Path::new(src).file_name().unwrap().to_string_lossy();
                    let to = if dest.ends_with('/') {
                        format!("{dest}{name}")
                    } else {
                        dest.to_string()
                    };
                    img.copies.push((src.to_string(), to));
                }
            }
            "USER" => {
                let (u, g) = rest.trim().split_once(':').unwrap_or((rest.trim(), ""));
                let uid = u.parse().map_err(|_| unsupported())?;
                let gid = if g.is_empty() {
                    uid
                } else {
                    g.parse().map_err(|_| unsupported())?
                };
                img.user = (uid, gid);
            }
            "ENTRYPOINT" => img.entrypoint = exec_form(rest),
            "CMD" => img.cmd = exec_form(rest),
            "EXPOSE" | "LABEL" | "ENV" | "ARG" => {}
            _ => return Err(unsupported()),
        }
    }
    found.ok_or_else(|| ImageError::NoStage(stage.into()))
}

/// The repository's Dockerfile.
pub fn dockerfile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile")
}

/// Set to `release` to run the Pods from release builds (the benchmarks do).
pub const PROFILE_ENV: &str = "FERROLB_IMAGE_PROFILE";

/// Where `tests/run.sh` builds the static binaries: the host's target
/// triple under the workspace's target directory (`debug`, or
/// [`PROFILE_ENV`]).
pub fn static_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::var(PROFILE_ENV).unwrap_or_else(|_| "debug".into());
    target.join(host_triple()).join(profile)
}

/// `x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`, ...
pub fn host_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// The command that builds the static binaries (printed when they are missing).
pub fn build_command() -> String {
    format!(
        "RUSTFLAGS='-C target-feature=+crt-static' cargo build --target {} -p ferrolb-speaker -p ferrolb-controller --bins",
        host_triple()
    )
}

/// Whether the static binaries are built.
pub fn static_binaries_built() -> bool {
    ["ferrolb-speaker", "ferrolb-controller"]
        .iter()
        .all(|b| static_dir().join(b).is_file())
}

impl Image {
    /// Stage `stage` of the repository's Dockerfile.
    pub fn from_dockerfile(stage: &str) -> Image {
        let text = std::fs::read_to_string(dockerfile()).expect("read the Dockerfile");
        parse(&text, stage).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Lays the image out in `dir`: the base's files, then each copied
    /// file (hard-linked from the static build when it can be).
    pub fn unpack(&self, dir: &Path) {
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
        )
        .unwrap();
        for d in ["tmp", "root", "home/nonroot"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        for (src, to) in &self.copies {
            let name = Path::new(src).file_name().unwrap();
            let from = static_dir().join(name);
            assert!(
                from.is_file(),
                "{} is not built; run: {}",
                from.display(),
                build_command()
            );
            let dest = dir.join(to.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            if std::fs::hard_link(&from, &dest).is_err() {
                std::fs::copy(&from, &dest).unwrap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stages_of_the_dockerfile_are_read() {
        let s = Image::from_dockerfile("speaker");
        assert_eq!(
            s.copies,
            vec![(
                "/usr/local/bin/ferrolb-speaker".to_string(),
                "/ferrolb-speaker".to_string()
            )]
        );
        assert_eq!(s.user, (0, 0));
        assert_eq!(s.entrypoint, vec!["/ferrolb-speaker"]);
        let c = Image::from_dockerfile("controller");
        assert_eq!(c.user, (65532, 65532));
        assert_eq!(c.entrypoint, vec!["/ferrolb-controller"]);
        assert_eq!(c.cmd, vec!["run"]);
        assert!(parse("FROM x AS a\nRUN apt-get update\n", "a").is_err());
        assert!(parse("FROM x AS a\n", "b").is_err());
    }
}
