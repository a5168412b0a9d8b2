//! Publisher-side commands that need no control plane: `keys generate`, `sign`, and building
//! trust root documents for `trust init|rotate`. Private keys never leave this machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tern_proto::release::{ArtifactKind, Digest, Release, SignedRelease};
use tern_proto::signing::{PublicKey, SecretKey, Signed};
use tern_proto::trust::{SignedTrustRoot, TrustRoot};

/// Writes `bytes` to a new file (never over an existing one), mode 0600 when `secret`.
fn create_new(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half of it.
pub fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-ternctl");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("failed to write {}", path.display()))
}

/// `ternctl keys generate --out NAME`: NAME.key (0600) and NAME.pub. Returns the key id.
pub fn generate(out: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let key = SecretKey::generate();
    let (private, public) = (with_suffix(out, "key"), with_suffix(out, "pub"));
    if public.exists() {
        bail!(
            "{} already exists; refusing to overwrite a key",
            public.display()
        );
    }
    create_new(&private, key.to_pem().as_bytes(), true)?;
    create_new(&public, key.public().to_pem().as_bytes(), false)?;
    Ok((private, public, key.public().id()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

pub fn read_secret(path: &Path) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    SecretKey::from_pem(&text).with_context(|| format!("{} is not a private key", path.display()))
}

/// Where `sign` reads the publisher's private key: a file, `-` (standard input), or an
/// environment variable (a CI secret), never a command-line argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Stdin,
    Env(String),
}

impl KeySource {
    /// `--key FILE|-` or `--key-env VAR`.
    pub fn from_args(key: Option<PathBuf>, key_env: Option<String>) -> anyhow::Result<Self> {
        match (key, key_env) {
            (Some(path), None) if path.as_os_str() == "-" => Ok(KeySource::Stdin),
            (Some(path), None) => Ok(KeySource::File(path)),
            (None, Some(var)) => Ok(KeySource::Env(var)),
            _ => anyhow::bail!(
                "sign needs one of --key FILE, --key - (standard input) or --key-env VAR"
            ),
        }
    }

    /// The private key.
    pub fn read(&self) -> anyhow::Result<SecretKey> {
        let (text, from) = match self {
            KeySource::File(path) => return read_secret(path),
            KeySource::Stdin => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .context("failed to read the key from standard input")?;
                (text, "standard input".to_owned())
            }
            KeySource::Env(var) => (
                std::env::var(var)
                    .with_context(|| format!("the environment variable {var} is not set"))?,
                format!("${var}"),
            ),
        };
        SecretKey::from_pem(&text).with_context(|| format!("{from} does not hold a private key"))
    }
}

pub fn read_public(path: &Path) -> anyhow::Result<PublicKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    PublicKey::from_text(&text).with_context(|| format!("{} is not a public key", path.display()))
}

/// `FILE.release` for `FILE`.
pub fn release_path(file: &Path) -> PathBuf {
    with_suffix(file, "release")
}

pub fn read_release(path: &Path) -> anyhow::Result<SignedRelease> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a release file", path.display()))
}

/// A trust root document (from `trust init|rotate`).
pub fn read_trust_root(path: &Path) -> anyhow::Result<SignedTrustRoot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a trust root", path.display()))
}

/// What `ternctl sign` is asked to state.
#[derive(Debug)]
pub struct SignRequest<'a> {
    pub key: &'a KeySource,
    pub kind: ArtifactKind,
    pub name: &'a str,
    pub version: u64,
    pub expires: Option<Duration>,
    pub annotations: BTreeMap<String, String>,
    pub file: &'a Path,
}

/// Signs `file`, writing `FILE.release`. When that file already states the same artifact, the
/// signature is added to it (co-signing towards a threshold above one).
pub fn sign(request: &SignRequest<'_>) -> anyhow::Result<(PathBuf, SignedRelease)> {
    let key = request.key.read()?;
    if !tern_proto::labels::valid_name(request.name) {
        bail!(
            "--name `{}` must be 1-63 characters of a-z, 0-9, `-`, `.`, `_`",
            request.name
        );
    }
    let (size, digest) = hash(request.file)?;
    let out = release_path(request.file);
    let mut signed = if out.exists() {
        let existing = read_release(&out)?;
        let r = &existing.signed;
        if (r.kind, r.name.as_str(), r.version, r.digest, r.size)
            != (request.kind, request.name, request.version, digest, size)
        {
            bail!(
                "{} states another release ({} {}, {}); remove it to sign this one",
                out.display(),
                r.kind,
                r.reference(),
                r.digest
            );
        }
        existing
    } else {
        let now = tern_clock::unix_millis_now();
        Signed::unsigned(Release {
            name: request.name.to_owned(),
            kind: request.kind,
            version: request.version,
            digest,
            size,
            created_ms: now,
            expires_ms: request
                .expires
                .map(|d| now.saturating_add(d.as_millis() as u64)),
            annotations: request.annotations.clone(),
        })
    };
    signed.signed.validate()?;
    signed.sign(&key);
    let text = serde_json::to_string_pretty(&signed)? + "\n";
    replace(&out, text.as_bytes())?;
    Ok((out, signed))
}

/// Size and SHA-256 of a file, streamed.
pub fn hash(path: &Path) -> anyhow::Result<(u64, Digest)> {
    std::fs::File::open(path)
        .and_then(Digest::of_reader)
        .with_context(|| format!("failed to read {}", path.display()))
}

/// A first trust root, signed by its root keys.
pub fn trust_init(
    root_keys: &[SecretKey],
    root_threshold: u32,
    publishers: Vec<PublicKey>,
    threshold: u32,
    expires: Option<std::time::Duration>,
) -> anyhow::Result<SignedTrustRoot> {
    let now = tern_clock::unix_millis_now();
    let body = TrustRoot {
        version: 1,
        root_keys: root_keys.iter().map(SecretKey::public).collect(),
        root_threshold,
        publishers,
        threshold,
        created_ms: now,
        expires_ms: expires.map(|d| now.saturating_add(d.as_millis() as u64)),
    };
    body.validate()?;
    let mut doc = Signed::unsigned(body);
    for key in root_keys {
        doc.sign(key);
    }
    doc.accept(None)?;
    Ok(doc)
}

/// What `trust rotate` changes; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct Rotation {
    pub new_root_keys: Vec<SecretKey>,
    pub root_threshold: Option<u32>,
    pub publishers: Option<Vec<PublicKey>>,
    pub threshold: Option<u32>,
    /// How long the new trust root is valid; `None`: it does not expire.
    pub expires: Option<std::time::Duration>,
}

/// The successor of `current`, signed by `current_root_keys` (which must reach the current
/// root threshold) and by any new root keys.
pub fn trust_rotate(
    current: &SignedTrustRoot,
    current_root_keys: &[SecretKey],
    rotation: Rotation,
) -> anyhow::Result<SignedTrustRoot> {
    let pinned = &current.signed;
    let now = tern_clock::unix_millis_now();
    let body = TrustRoot {
        version: pinned.version + 1,
        root_keys: if rotation.new_root_keys.is_empty() {
            pinned.root_keys.clone()
        } else {
            rotation
                .new_root_keys
                .iter()
                .map(SecretKey::public)
                .collect()
        },
        root_threshold: rotation.root_threshold.unwrap_or(pinned.root_threshold),
        publishers: rotation
            .publishers
            .unwrap_or_else(|| pinned.publishers.clone()),
        threshold: rotation.threshold.unwrap_or(pinned.threshold),
        created_ms: now,
        expires_ms: (rotation.expires).map(|d| now.saturating_add(d.as_millis() as u64)),
    };
    body.validate()?;
    let mut doc = Signed::unsigned(body);
    for key in current_root_keys.iter().chain(&rotation.new_root_keys) {
        doc.sign(key);
    }
    doc.accept(Some(current))
        .context("the rotated trust root would be refused")?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosigning_adds_to_the_same_release_and_refuses_another() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("m.onnx");
        std::fs::write(&file, b"model").expect("write");
        let (a, _, _) = generate(&tmp.path().join("a")).expect("a");
        let (b, _, _) = generate(&tmp.path().join("b")).expect("b");
        let (a, b) = (KeySource::File(a), KeySource::File(b));
        assert!(generate(&tmp.path().join("a")).is_err(), "no overwrite");
        let request = |key| SignRequest {
            key,
            kind: ArtifactKind::Model,
            name: "m",
            version: 1,
            expires: None,
            annotations: BTreeMap::new(),
            file: &file,
        };
        sign(&request(&a)).expect("first");
        let (_, both) = sign(&request(&b)).expect("second");
        assert_eq!(both.signatures.len(), 2);
        let other = SignRequest {
            version: 2,
            ..request(&a)
        };
        assert!(sign(&other).is_err());
    }

    #[test]
    fn a_key_comes_from_a_file_or_an_environment_variable() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (path, _, id) = generate(&tmp.path().join("k")).expect("k");
        // The environment's happy path runs in the end-to-end tests (`ternctl` as a process).
        let not_a_key = KeySource::from_args(None, Some("PATH".into())).expect("env");
        let refused = not_a_key.read().unwrap_err().to_string();
        assert!(
            refused.contains("$PATH does not hold a private key"),
            "{refused}"
        );
        let var = format!("TERN_TEST_KEY_{}", std::process::id());
        let from_file = KeySource::from_args(Some(path), None).expect("file");
        assert_eq!(from_file.read().expect("reads").public().id(), id);
        assert_eq!(
            KeySource::from_args(Some("-".into()), None).expect("stdin"),
            KeySource::Stdin
        );
        assert!(KeySource::from_args(None, None).is_err());
        let unset = KeySource::Env(format!("{var}_UNSET")).read().unwrap_err();
        assert!(unset.to_string().contains("not set"), "{unset}");
    }

    #[test]
    fn rotation_is_signed_by_the_current_root() {
        let (root, publisher, next) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let v1 = trust_init(
            std::slice::from_ref(&root),
            1,
            vec![publisher.public()],
            1,
            None,
        )
        .expect("init");
        let v2 = trust_rotate(
            &v1,
            std::slice::from_ref(&root),
            Rotation {
                publishers: Some(vec![publisher.public(), next.public()]),
                threshold: Some(2),
                ..Rotation::default()
            },
        )
        .expect("rotate");
        assert_eq!(v2.signed.version, 2);
        assert!(trust_rotate(&v2, &[next], Rotation::default()).is_err());
    }
}
