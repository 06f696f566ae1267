//! Encryption at rest for the local cluster: Secrets and ConfigMaps are stored in etcd
//! encrypted with AES-GCM under a 32-byte key generated for the cluster, kept in the cluster's
//! directory (mode 0600), and handed to the API server as `--encryption-provider-config`.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use skiff_testbed::control::{aesgcm_config, random_key};

/// The configuration file's name in the API server's directory.
pub const FILE: &str = "encryption.yaml";

/// The resources the local cluster encrypts (those Kubernetes' documentation starts with).
pub const RESOURCES: &[&str] = &["secrets", "configmaps"];

/// The name of the generated key, as stored values name it (`k8s:enc:aesgcm:v1:local-1:`).
const KEY_NAME: &str = "local-1";

/// Writes the cluster's `EncryptionConfiguration` into `dir` (the API server's directory) with
/// a new random key, unless it is already there (a cluster brought up again keeps its key, or
/// what it stored could not be read). `identity` comes second, so that a cluster made before
/// encryption existed still reads its plain values; every write is encrypted. Returns the
/// file's path.
pub fn write_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(FILE);
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} holds the cluster's encryption key but is readable by others (mode {mode:o}); chmod 600 it",
                    path.display()
                );
            }
            return Ok(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let yaml = aesgcm_config(RESOURCES, &[(KEY_NAME, &random_key()?)], true);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(yaml.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_written_once_private_and_kept_on_the_next_call() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("skiff-local-enc-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let path = write_config(&dir)?;
        let first = fs::read_to_string(&path)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert!(first.contains("kind: EncryptionConfiguration"));
        assert!(first.contains("- \"secrets\"") && first.contains("- \"configmaps\""));
        assert!(first.contains("name: local-1"));
        assert_eq!(write_config(&dir)?, path);
        assert_eq!(fs::read_to_string(&path)?, first, "the key is kept");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        let err = write_config(&dir).expect_err("a readable key file is refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
