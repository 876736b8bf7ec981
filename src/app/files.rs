//! Desktop file access for the core: memory-mapped reads of model folders and files, and atomic
//! writes (temp file + fsync + rename) so a crash or a full disk never leaves half a file.

use crate::io::{Blob, FileSource, LoadError};
use crate::model::loader::ModelSource;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Read a whole file as a shared blob (memory-mapped when a non-empty regular file; a pipe such as
/// `<(cmd)` or `/dev/stdin` is read to its end).
pub fn read_blob(path: &Path) -> Result<Blob, LoadError> {
    let os = |cause| LoadError::Os {
        file: path.display().to_string(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(os)?;
    let meta = file.metadata().map_err(os)?;
    if meta.is_dir() {
        return Err(LoadError::invalid(
            path.display().to_string(),
            "is a folder, expected a file",
        ));
    }
    if !meta.is_file() {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(os)?;
        return Ok(Arc::new(bytes));
    }
    if meta.len() == 0 {
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // SAFETY: the map is read-only; a file truncated underneath us by another process is the one
    // case memmap cannot guard against, as in every mmap-based loader (safetensors, llama.cpp).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(os)?;
    Ok(Arc::new(map))
}

/// A model folder on disk.
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    /// Files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl FileSource for DirSource {
    fn read(&self, name: &str) -> Result<Option<Blob>, LoadError> {
        // Names may come from model files (a sharded index): never leave the folder.
        crate::io::check_relative_name(name).map_err(|why| {
            LoadError::invalid(
                self.root.display().to_string(),
                format!("refusing to read {name:?}: the name {why}"),
            )
        })?;
        let path = self.root.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        read_blob(&path).map(Some)
    }

    fn display(&self, name: &str) -> String {
        if name.is_empty() {
            self.root.display().to_string()
        } else {
            self.root.join(name).display().to_string()
        }
    }
}

/// The model at `path`: a GGUF file or an HF folder. `dir` keeps the folder source alive.
pub fn model_source<'a>(
    path: &Path,
    dir: &'a mut Option<DirSource>,
) -> Result<ModelSource<'a>, LoadError> {
    if path.is_dir() {
        return Ok(ModelSource::HfFolder(dir.insert(DirSource::new(path))));
    }
    if !path.exists() {
        return Err(LoadError::Missing {
            file: path.display().to_string(),
        });
    }
    let bytes = read_blob(path)?;
    if !(*bytes).as_ref().starts_with(b"GGUF") {
        return Err(LoadError::invalid(
            path.display().to_string(),
            "not a GGUF file (no GGUF magic) and not an HF model folder",
        ));
    }
    Ok(ModelSource::Gguf {
        bytes,
        name: path.display().to_string(),
    })
}

/// The name llama.cpp's converters give a folder's model or adapter without `--model-name`: the
/// folder's own name (resolved, so `.` works) through gguf-py's title casing.
pub fn folder_title(folder: &Path) -> String {
    let resolved = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    crate::io::gguf_adapter::title(&resolved.file_name().unwrap_or_default().to_string_lossy())
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsync, then rename over `path`.
/// On failure `path` is untouched and the error names it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        std::io::Error::new(e.kind(), format!("{}: cannot write: {e}", path.display()))
    })
}
