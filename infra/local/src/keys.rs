//! Small private files under the data directory, created on first run with mode 0600:
//! `keys.json` (the token key ring and the link-signing key) and, with `--dev`, `dev.json`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use spkeeper::config::KeyFile;

pub const KEY_FILE: &str = "keys.json";

/// Reads `path`, or creates it with `make()` if it does not exist (two processes starting at
/// once agree on one file: creation is exclusive). Refuses a file others can read.
pub fn load_or_create<T, F>(path: &Path, make: F) -> Result<T, String>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, String>,
{
    if let Some(dir) = path.parent() {
        // The data directory is private too.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let value = make()?;
            let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(value)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// Reads `path` if it exists, with the same checks as [`load_or_create`] (a file others can
/// read is refused), and creates nothing: `None` when there is no such file.
pub fn existing<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(_) => read(path).map(Some),
    }
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    // A file created this instant by another process may still be empty: wait for it.
    for _ in 0..50 {
        let meta =
            fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{} is readable by other users; run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !text.trim().is_empty() {
            return serde_json::from_str(&text)
                .map_err(|_| format!("{} is not valid JSON", path.display()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("{} is empty", path.display()))
}

/// The key file: generated on first run.
pub fn key_file(data_dir: &Path) -> Result<KeyFile, String> {
    load_or_create(&data_dir.join(KEY_FILE), || {
        KeyFile::generate().map_err(|e| format!("the system random generator failed: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = key_file(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = key_file(dir.path()).unwrap();
        assert_eq!(a.link_key, b.link_key);
        assert_eq!(a.active_token_key, b.active_token_key);
    }

    #[test]
    fn an_existing_file_is_read_with_the_same_checks_and_a_missing_one_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        assert!(existing::<KeyFile>(&path).unwrap().is_none());
        assert!(!path.exists());
        let made = key_file(dir.path()).unwrap();
        let read = existing::<KeyFile>(&path).unwrap().unwrap();
        assert_eq!(made.link_key, read.link_key);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = existing::<KeyFile>(&path).err().unwrap();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = key_file(dir.path()).err().unwrap();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
