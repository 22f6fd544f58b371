//! The admin token when the config names none (SPEC §4, command line): the
//! first start generates one, keeps it in `data_dir/admin-token` readable
//! by its owner only (mode 0600), and every later start reads it back, so a
//! new user can sign in without writing a config.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// The file under `data_dir` that holds a generated token.
pub const FILE_NAME: &str = "admin-token";

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// `[admin] token` or `POWERDIAL_ADMIN_TOKEN`.
    Configured(String),
    /// Generated on an earlier start and read back from `path`.
    Stored {
        /// The token.
        token: String,
        /// The file it was read from.
        path: PathBuf,
    },
    /// Generated now (first start) and written to `path`.
    Generated {
        /// The token.
        token: String,
        /// The file it was written to.
        path: PathBuf,
    },
}

impl AdminToken {
    /// The token itself.
    pub fn token(&self) -> &str {
        match self {
            AdminToken::Configured(t) => t,
            AdminToken::Stored { token, .. } | AdminToken::Generated { token, .. } => token,
        }
    }
}

/// Why the stored token could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// Reading or writing the token file failed.
    #[error("admin token file {path}: {source} (set [admin] token or POWERDIAL_ADMIN_TOKEN, or fix the file's permissions)")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but holds no usable token.
    #[error("admin token file {path} is empty or not one line of text: delete it to have a new token generated")]
    Malformed {
        /// The file.
        path: String,
    },
}

/// The configured token, else the stored one, else a new one (256 random
/// bits from the OS, hex) written with mode 0600.
pub fn resolve(configured: Option<&str>, data_dir: &Path) -> Result<AdminToken, AdminTokenError> {
    if let Some(t) = configured.filter(|t| !t.is_empty()) {
        return Ok(AdminToken::Configured(t.to_string()));
    }
    let path = data_dir.join(FILE_NAME);
    let io = |source| AdminTokenError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err(AdminTokenError::Malformed {
                    path: path.display().to_string(),
                });
            }
            return Ok(AdminToken::Stored {
                token: token.to_string(),
                path,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io)?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(AdminToken::Generated { token, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_wins_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let t = resolve(Some("from-config"), dir.path()).unwrap();
        assert_eq!(t, AdminToken::Configured("from-config".into()));
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn generated_once_then_read_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = resolve(None, dir.path()).unwrap();
        let AdminToken::Generated { token, path } = &first else {
            panic!("first start generates: {first:?}");
        };
        assert_eq!(token.len(), 64, "256 bits in hex");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = resolve(Some(""), dir.path()).unwrap();
        assert_eq!(
            second,
            AdminToken::Stored {
                token: token.clone(),
                path: path.clone()
            }
        );
    }

    #[test]
    fn a_broken_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "  \n").unwrap();
        let e = resolve(None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("delete it"), "{e}");
    }
}
