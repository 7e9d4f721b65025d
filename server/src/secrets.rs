//! Zero-config secrets: the JWT secret and publish key a hub generates on its first start
//! and keeps in its data dir (files of mode 0600), so a second start reuses them.

use crate::auth::random_secret;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// File name of the generated JWT secret.
pub const JWT_SECRET_FILE: &str = "jwt-secret";
/// File name of the generated publish key(s), one per line.
pub const PUBLISH_KEY_FILE: &str = "publish-key";
/// Shortest JWT secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Shortest publish key accepted, in characters: a key is the whole credential of a
/// publisher, and a short one can be guessed.
pub const MIN_KEY_LEN: usize = 16;

/// The secrets a hub runs with.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The HS256 secret.
    pub jwt_secret: String,
    /// The publish keys.
    pub publish_keys: Vec<String>,
    /// Files that were created by this call (first start).
    pub created: Vec<PathBuf>,
}

/// Why secrets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Reading or writing a secret file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The JWT secret is too short to be safe.
    #[error("the JWT secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    /// A publish key is empty.
    #[error("publish keys must not be empty")]
    EmptyKey,
    /// A publish key is too short to be safe.
    #[error(
        "publish key {shown}... is {len} characters long: publish keys must have at least \
         {MIN_KEY_LEN} (the generated ones have 36)"
    )]
    ShortKey {
        /// Its first characters (never the whole key).
        shown: String,
        /// Its length.
        len: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), SecretsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn read_or_create(
    dir: &Path,
    name: &str,
    make: impl FnOnce() -> String,
    created: &mut Vec<PathBuf>,
) -> Result<String, SecretsError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let value = make();
            write_private(&path, &format!("{value}\n"))?;
            created.push(path);
            Ok(value)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The JWT secret: the given one, else the data dir's, else a new one kept there.
pub fn jwt_secret(
    data_dir: &Path,
    given: Option<String>,
    created: &mut Vec<PathBuf>,
) -> Result<String, SecretsError> {
    let secret = match given {
        Some(s) => s,
        None => read_or_create(data_dir, JWT_SECRET_FILE, || random_secret(32), created)?,
    };
    let secret = secret.trim().to_owned();
    check_secret(&secret)?;
    Ok(secret)
}

/// The publish keys: the given ones, else the data dir's, else a new one kept there.
pub fn publish_keys(
    data_dir: &Path,
    given: Vec<String>,
    created: &mut Vec<PathBuf>,
) -> Result<Vec<String>, SecretsError> {
    let keys: Vec<String> = if given.is_empty() {
        read_or_create(
            data_dir,
            PUBLISH_KEY_FILE,
            || format!("bfk_{}", random_secret(24)),
            created,
        )?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
    } else {
        given.into_iter().map(|k| k.trim().to_owned()).collect()
    };
    check_keys(&keys)?;
    Ok(keys)
}

/// Checks publish keys: at least one, none shorter than [`MIN_KEY_LEN`].
pub fn check_keys(keys: &[String]) -> Result<(), SecretsError> {
    if keys.is_empty() || keys.iter().any(String::is_empty) {
        return Err(SecretsError::EmptyKey);
    }
    if let Some(short) = keys.iter().find(|k| k.chars().count() < MIN_KEY_LEN) {
        return Err(SecretsError::ShortKey {
            shown: short.chars().take(3).collect(),
            len: short.chars().count(),
        });
    }
    Ok(())
}

/// Checks a JWT secret: at least [`MIN_SECRET_LEN`] bytes.
pub fn check_secret(secret: &str) -> Result<(), SecretsError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(SecretsError::WeakSecret);
    }
    Ok(())
}

/// Resolves both secrets for a hub.
pub fn resolve(
    data_dir: &Path,
    jwt: Option<String>,
    keys: Vec<String>,
) -> Result<Secrets, SecretsError> {
    let mut created = Vec::new();
    let jwt_secret = jwt_secret(data_dir, jwt, &mut created)?;
    let publish_keys = publish_keys(data_dir, keys, &mut created)?;
    Ok(Secrets {
        jwt_secret,
        publish_keys,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_and_second_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = resolve(dir.path(), None, vec![]).expect("first");
        assert_eq!(first.created.len(), 2);
        assert!(first.publish_keys[0].starts_with("bfk_"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in &first.created {
                let mode = std::fs::metadata(f).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", f.display());
            }
        }
        let second = resolve(dir.path(), None, vec![]).expect("second");
        assert!(second.created.is_empty());
        assert_eq!(second.jwt_secret, first.jwt_secret);
        assert_eq!(second.publish_keys, first.publish_keys);
    }

    #[test]
    fn given_values_win_and_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = resolve(
            dir.path(),
            Some("a-secret-of-enough-length".into()),
            vec!["bfk_first_key_0123".into(), "bfk_second_key_012".into()],
        )
        .expect("given");
        assert!(s.created.is_empty());
        assert_eq!(
            s.publish_keys,
            vec!["bfk_first_key_0123", "bfk_second_key_012"]
        );
        assert!(matches!(
            resolve(dir.path(), Some("short".into()), vec!["k".into()]),
            Err(SecretsError::WeakSecret)
        ));
        assert!(matches!(
            resolve(
                dir.path(),
                Some("a-secret-of-enough-length".into()),
                vec![" ".into()]
            ),
            Err(SecretsError::EmptyKey)
        ));
        // Short keys are refused with a message that names the rule, never the key.
        let short = resolve(
            dir.path(),
            Some("a-secret-of-enough-length".into()),
            vec!["bfk_long_enough_key".into(), "k1-secret".into()],
        )
        .expect_err("refused");
        assert!(matches!(short, SecretsError::ShortKey { len: 9, .. }));
        let message = short.to_string();
        assert!(message.contains("at least 16"), "{message}");
        assert!(!message.contains("k1-secret"), "{message}");
    }
}
