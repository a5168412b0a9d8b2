//! Permissions of what holds secrets: a data directory only its owner may enter (0700) and the
//! files in it that hold keys, credentials or a store's settings only its owner may read
//! (0600). Both daemons check them at every start and tighten what is looser, saying which.

use std::path::Path;

/// Tightens `dir` to 0700 and each existing file of `secrets` to 0600 where group or others
/// have any access; returns a sentence for each change (for the log). Files that do not exist
/// are skipped; an error names the path.
#[cfg(unix)]
pub fn tighten(dir: &Path, secrets: &[&Path]) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut changed = Vec::new();
    let mut fix = |path: &Path, wanted: u32, what: &str| -> std::io::Result<()> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ));
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            return Ok(());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        changed.push(format!(
            "{what} {} was open to group or others ({mode:03o}): now {wanted:03o}",
            path.display()
        ));
        Ok(())
    };
    fix(dir, 0o700, "data directory")?;
    for file in secrets {
        fix(file, 0o600, "secret file")?;
    }
    Ok(changed)
}

/// Elsewhere, permissions are the platform's.
#[cfg(not(unix))]
pub fn tighten(_dir: &Path, _secrets: &[&Path]) -> std::io::Result<Vec<String>> {
    Ok(Vec::new())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn loose_directories_and_secret_files_are_tightened_and_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let key = dir.join("ca.key");
        std::fs::write(&key, "secret").expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let tight = dir.join("server.key");
        std::fs::write(&tight, "secret").expect("key");
        std::fs::set_permissions(&tight, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let missing = dir.join("none.key");
        let said = tighten(&dir, &[&key, &tight, &missing]).expect("tighten");
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("data directory") && said[0].contains("(755)"));
        assert!(said[1].contains("ca.key") && said[1].contains("now 600"));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(
            (mode(&dir), mode(&key), mode(&tight)),
            (0o700, 0o600, 0o600)
        );
        assert!(
            tighten(&dir, &[&key]).expect("again").is_empty(),
            "nothing left to do"
        );
    }
}
