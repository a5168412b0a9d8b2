//! The on-disk cache of compiled components.
//!
//! An entry is named by the SHA-256 of the component it was compiled from and a hash of the
//! engine's compatibility-relevant configuration, and is only ever written by this module from a
//! component this process compiled itself. Precompiled code from anywhere else is never loaded.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::LoadError;

#[derive(Debug)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, LoadError> {
        let err = |source| LoadError::Cache {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_key))
    }

    /// The cached compilation of the component with `digest`, if there is a usable one.
    pub fn load(&self, engine: &Engine, digest: &[u8; 32]) -> Option<Component> {
        let path = self.path(digest);
        // Read into memory rather than map the file: a mapped entry that something truncates
        // would crash the process (SIGBUS) instead of failing one load.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: `deserialize` trusts its input to be wasmtime's own output. Entries in this
        // directory (mode 0700) are written only by `store` below, from components this process
        // compiled, under a name that binds the source digest and engine configuration; wasmtime
        // also checks the engine compatibility header before using the code.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable cache entry");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compilation (atomically: a crash leaves no partial entry).
    pub fn store(&self, component: &Component, digest: &[u8; 32]) -> Result<(), LoadError> {
        let path = self.path(digest);
        let err = |source| LoadError::Cache {
            path: path.clone(),
            source,
        };
        let bytes = component
            .serialize()
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(err)?;
        tmp.write_all(&bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }
}
