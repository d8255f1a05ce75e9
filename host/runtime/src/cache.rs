//! The compiled-component cache: a component is compiled once per content digest and the
//! native artifact kept on disk, so a restarted host loads its plugins without recompiling.
//!
//! Invariants:
//! - An entry's name carries the component's sha256 and a hash of this engine's compatibility
//!   (wasmtime version and compilation settings): an artifact made by another wasmtime or another
//!   configuration is never even looked at.
//! - Deserialising an artifact runs native code wasmtime produced, so an entry is used only if
//!   its own sha256, written beside it when it was made, still matches: a truncated or corrupted
//!   file is recompiled and rewritten, never trusted. The directory must be writable by the
//!   host's user only (anyone who can write both files can make the host run their code).
//! - Entries are written to a temporary name and renamed, so a crash never leaves half a file
//!   under a real name.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Loaded from a valid cache entry.
    Hit,
    /// Compiled now (and written to the cache when possible).
    Compiled,
}

impl Source {
    /// `hit` or `compiled`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Compiled => "compiled",
        }
    }
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

fn engine_tag(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

impl CompiledCache {
    /// A cache in `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(CompiledCache {
            dir: dir.to_path_buf(),
        })
    }

    fn paths(&self, engine: &Engine, digest: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{digest}-{}", engine_tag(engine));
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.sha256")),
        )
    }

    /// The component for `bytes` (whose sha256 is `digest`), from the cache when a valid entry
    /// exists, compiled (and cached) otherwise.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, Source)> {
        let (artifact_path, sum_path) = self.paths(engine, digest);
        if let (Ok(artifact), Ok(sum)) = (
            std::fs::read(&artifact_path),
            std::fs::read_to_string(&sum_path),
        ) {
            if hex::encode(Sha256::digest(&artifact)) == sum.trim() {
                // SAFETY: the artifact was produced by `precompile_component` of an engine with
                // the same compatibility hash (it is in the file name) and its checksum matches
                // the one written with it, so it is the bytes wasmtime wrote.
                if let Ok(component) = unsafe { Component::deserialize(engine, &artifact) } {
                    return Ok((component, Source::Hit));
                }
            }
            tracing::warn!(path = %artifact_path.display(), "compiled-component cache entry is corrupt; recompiling");
        }
        let artifact = engine.precompile_component(bytes)?;
        if let Err(e) = self.store(&artifact_path, &sum_path, &artifact) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compiled-component cache");
        }
        // SAFETY: `artifact` was just produced by this engine's `precompile_component`.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, Source::Compiled))
    }

    fn store(&self, artifact_path: &Path, sum_path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        let write = |path: &Path, data: &[u8]| -> std::io::Result<()> {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, path)
        };
        write(artifact_path, artifact)?;
        write(sum_path, hex::encode(Sha256::digest(artifact)).as_bytes())
    }
}
