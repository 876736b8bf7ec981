//! A run's output folder on disk: one run at a time per folder ([`RunLock`]) and the
//! `metrics.jsonl` log, appended one whole line at a time ([`MetricsLog`]).

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a run folder.
pub const LOCK_FILE: &str = ".wgtune.lock";

/// An exclusive lock on a run folder for as long as it lives: a second run into the same folder
/// is refused with the holder's pid. The OS releases the lock when the process ends, however it
/// ends (kill -9 included), so a stale lock never blocks the next run.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Create `dir` if needed (nothing else in it is touched) and lock it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}: cannot open the run lock", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "{}: another wgtune run is writing to this folder (pid {}); wait for it to finish or choose another --out",
                    dir.display(),
                    holder.trim()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|_| file.write_all(std::process::id().to_string().as_bytes()))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

/// `metrics.jsonl`: one JSON object per line, each appended with a single write. A write that
/// fails half-way (full disk) is cut back, so the file never ends in a torn line; one left by a
/// killed process is dropped when the file is opened.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Open `path` for a run: empty it for a fresh run, or keep the lines of steps up to
    /// `resume_step` (dropping torn or later ones) for a resumed one.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<MetricsLog> {
        let ctx = || format!("{}: cannot write metrics", path.display());
        match resume_step {
            Some(step) => keep_up_to(path, step).with_context(ctx)?,
            None if path.exists() => File::create(path).map(drop).with_context(ctx)?,
            None => {}
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(ctx)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line; on failure the file is cut back to its last whole line and the error
    /// names the file.
    pub fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        let text = format!("{line}\n");
        let before = self.file.seek(SeekFrom::End(0)).unwrap_or(0);
        let result = self
            .file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush());
        if let Err(e) = result {
            let _ = self.file.set_len(before);
            bail!("{}: cannot append metrics: {e}", self.path.display());
        }
        Ok(())
    }
}

/// Keep the parseable lines of `path` whose step is at most `step` (a missing file is empty).
fn keep_up_to(path: &Path, step: u64) -> std::io::Result<()> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    super::files::write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_pid_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(tmp.path()).unwrap();
        let err = RunLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        RunLock::acquire(tmp.path()).unwrap();
    }

    #[test]
    fn resume_drops_torn_and_later_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4,\"lo",
        )
        .unwrap();
        let mut log = MetricsLog::open(&path, Some(2)).unwrap();
        log.append(&serde_json::json!({"step": 3})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n"
        );
        MetricsLog::open(&path, None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
