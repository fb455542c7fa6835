//! The embedded store's image bytes, one file each in `<data folder>/images/<id>`. Rows in the
//! image database say which files exist (and their task and content type); the bytes stay out of
//! SQLite, where a 100 KiB image cost several 64 KiB pages written to the WAL, checksummed and
//! checkpointed again: in a burst of completions the image lane's writer was a fifth of the
//! service's CPU, and the delivery of every completion waited behind it.
//!
//! A file is complete before its row commits (written under a temporary name, renamed into
//! place), and its row is deleted before the file, so a row never names a missing or partial
//! file. A crash between the two steps can leave a file without a row: unreachable, and only
//! disk space. With `EMBEDDED_SYNC=full` the file and the folder are synced before the row
//! commits, so an image survives power loss as its task does.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::SyncMode;
use crate::domain::is_valid_id;

use super::StoreError;

pub struct ImageFiles {
    dir: PathBuf,
    sync: SyncMode,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

const TEMP_SUFFIX: &str = ".partial";

impl ImageFiles {
    /// Creates the folder if needed and removes files a crash left half-written.
    pub fn open(dir: PathBuf, sync: SyncMode) -> Result<ImageFiles, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("cannot list", &dir, e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ImageFiles { dir, sync })
    }

    /// The file of image `id`; `None` for anything but an image id (ids reach here from URLs).
    fn path(&self, id: &str) -> Option<PathBuf> {
        is_valid_id(id).then(|| self.dir.join(id))
    }

    /// Writes the bytes of image `id` in full (blocking).
    pub fn write(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self
            .path(id)
            .ok_or_else(|| StoreError::Backend(format!("not an image id: {id}")))?;
        let temp = self.dir.join(format!("{id}{TEMP_SUFFIX}"));
        let mut file =
            std::fs::File::create(&temp).map_err(|e| io_error("cannot create", &temp, e))?;
        file.write_all(data)
            .map_err(|e| io_error("cannot write", &temp, e))?;
        if self.sync == SyncMode::Full {
            file.sync_all()
                .map_err(|e| io_error("cannot sync", &temp, e))?;
        }
        drop(file);
        std::fs::rename(&temp, &path).map_err(|e| io_error("cannot rename", &temp, e))?;
        if self.sync == SyncMode::Full {
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("cannot sync", &self.dir, e))?;
        }
        Ok(())
    }

    /// The bytes of image `id`, `None` when there is no such file (blocking).
    pub fn read(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = self.path(id) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    /// Removes the files of these images, those already gone included (blocking).
    pub fn remove(&self, ids: &[String]) {
        for id in ids {
            if let Some(path) = self.path(id) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(image_id = %id, error = %e, "could not delete an image file")
                    }
                }
            }
        }
    }
}
