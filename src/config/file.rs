//! Reading the config file: a regular file only, and never more than
//! [`MAX_CONFIG_BYTES`] of it.

use std::path::Path;

use super::{ConfigError, MAX_CONFIG_BYTES};

/// The config file's bytes. It must be a regular file (a FIFO would block
/// the reader, a device would never end), read up to [`MAX_CONFIG_BYTES`].
pub(super) fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    // Opening a device can act on it (a tape rewinds): look first. Then
    // open non-blocking, so that a FIFO swapped in meanwhile does not wait
    // for a writer, and look again at what was opened.
    if !std::fs::metadata(path).map_err(read_err)?.is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut text = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}
