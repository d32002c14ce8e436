//! Who is working on what. Each process that drives a transition holds an
//! exclusive lock on its own file under `workers/` in the data directory and
//! writes that file's id into the rows it works on. The kernel drops the lock
//! when the process dies, however it dies, so a row whose worker's file is no
//! longer locked was left by a crash, while a row with no worker is pending.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// This process's worker registration; unregistered on drop.
#[derive(Debug)]
pub struct Worker {
    id: String,
    path: PathBuf,
    _file: File,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("workers")
}

impl Worker {
    /// Registers this process as a worker.
    pub fn register(data_dir: &Path) -> Result<Worker> {
        let dir = dir(data_dir);
        let io = |source| Error::DataDir {
            path: dir.clone(),
            source,
        };
        crate::store::ensure_private_dir(&dir).map_err(io)?;
        let id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let path = dir.join(format!("{id}.lock"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(crate::store::FILE_MODE)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(Worker {
            id,
            path,
            _file: file,
        })
    }

    /// The id written into the rows this worker drives.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the worker with this id may still be alive. Only proof counts as
/// death: its file gone (a worker removes it when it ends) or its lock taken
/// here. A file that cannot be opened or locked for any other reason is "not
/// known dead", and recovery leaves that worker's rows alone.
pub fn is_alive(data_dir: &Path, id: &str) -> bool {
    if id.contains(['/', '\\']) || id.starts_with('.') {
        return false;
    }
    let path = dir(data_dir).join(format!("{id}.lock"));
    let file = match OpenOptions::new().write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            tracing::warn!(worker = id, error = %e, "cannot check a worker's lock; taking it as alive");
            return true;
        }
    };
    match file.try_lock() {
        Ok(()) => {
            // Nobody holds it: its process is gone. Tidy up.
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_worker_is_alive_and_a_dropped_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Worker::register(dir.path()).expect("register");
        let id = w.id().to_owned();
        assert!(is_alive(dir.path(), &id));
        drop(w);
        assert!(!is_alive(dir.path(), &id));
    }

    #[test]
    fn a_lock_file_that_cannot_be_opened_is_not_taken_as_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the lock file should be: opening it for writing
        // fails (EISDIR) even for root, like an unreadable file would.
        std::fs::create_dir_all(dir.path().join("workers/77-x.lock")).expect("mkdir");
        assert!(is_alive(dir.path(), "77-x"));
        assert!(dir.path().join("workers/77-x.lock").exists());
    }

    #[test]
    fn an_unknown_worker_is_not_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_alive(dir.path(), "123-nope"));
        assert!(!is_alive(dir.path(), "../etc/passwd"));
    }
}
