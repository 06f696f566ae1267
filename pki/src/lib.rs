//! The certificates a Skiff cluster runs on, made in one go into one directory.
//!
//! Two authorities, as kubeadm lays them out: the cluster CA signs the API server's serving
//! certificate (what skiffctl and kubectl trust), and a separate etcd CA signs etcd's serving
//! and peer certificates and the API server's etcd client certificate. etcd trusts only the etcd
//! CA, so no certificate made for the API side (or, later, for users) can ever open etcd.
//!
//! ```text
//! <dir>/ca.crt ca.key                          cluster CA
//! <dir>/apiserver.crt apiserver.key            the API server's serving certificate
//! <dir>/apiserver-etcd-client.crt .key         the API server's client certificate for etcd
//! <dir>/etcd/ca.crt ca.key                     etcd CA
//! <dir>/etcd/<member>/server.crt server.key    a member's client-facing certificate
//! <dir>/etcd/<member>/peer.crt peer.key        a member's peer certificate
//! ```
//!
//! Directories are made mode 0700 and private keys written 0600, before any byte of them.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host name or address is not usable in a certificate.
    #[error("{host:?} is neither an IP address nor a DNS name usable in a certificate")]
    BadHost {
        /// The name as given.
        host: String,
    },
    /// An etcd member name would not make a plain directory name.
    #[error(
        "etcd member name {name:?} must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    BadMemberName {
        /// The name as given.
        name: String,
    },
    /// Two etcd members were given the same name.
    #[error("etcd member {name:?} is given twice")]
    DuplicateMember {
        /// The repeated name.
        name: String,
    },
    /// A file of the set exists already: nothing is overwritten.
    #[error("{} exists already; certificates are never overwritten (choose another directory or remove it)", path.display())]
    Exists {
        /// The file found.
        path: PathBuf,
    },
    /// An existing directory others may enter: keys would be one `chmod` away from them.
    #[error(
        "{} has mode {mode:o}: the certificates' directory must be closed to other users (chmod 700, or name a new directory)",
        path.display()
    )]
    OpenDirectory {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// rcgen refused the parameters or failed to sign.
    #[error("making the certificate {what}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a file or directory failed.
    #[error("writing {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One etcd member: its name and the addresses clients and peers reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    /// The member's `--name`, also its directory under `etcd/`.
    pub name: String,
    /// DNS names and IP addresses in its serving and peer certificates.
    pub hosts: Vec<String>,
}

/// What to make.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Every etcd member.
    pub etcd_members: Vec<EtcdMember>,
    /// DNS names and IP addresses in the API server's serving certificate.
    pub api_hosts: Vec<String>,
    /// How long the leaf certificates are valid (the CAs get ten times as long).
    pub validity: std::time::Duration,
}

/// A certificate and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    fn new(dir: &Path, stem: &str) -> Pair {
        Pair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }
}

/// The files of a cluster's certificates under one directory (whether or not they exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub dir: PathBuf,
    pub ca: Pair,
    pub apiserver: Pair,
    pub apiserver_etcd_client: Pair,
    pub etcd_ca: Pair,
}

impl Files {
    /// The layout under `dir`.
    pub fn at(dir: &Path) -> Files {
        Files {
            dir: dir.to_owned(),
            ca: Pair::new(dir, "ca"),
            apiserver: Pair::new(dir, "apiserver"),
            apiserver_etcd_client: Pair::new(dir, "apiserver-etcd-client"),
            etcd_ca: Pair::new(&dir.join("etcd"), "ca"),
        }
    }

    /// Member `name`'s client-facing (serving) certificate.
    pub fn etcd_server(&self, name: &str) -> Pair {
        Pair::new(&self.dir.join("etcd").join(name), "server")
    }

    /// Member `name`'s peer certificate.
    pub fn etcd_peer(&self, name: &str) -> Pair {
        Pair::new(&self.dir.join("etcd").join(name), "peer")
    }

    /// The flags that give etcd member `name` mutual TLS on its client and peer URLs.
    pub fn etcd_flags(&self, name: &str) -> Vec<String> {
        let (server, peer) = (self.etcd_server(name), self.etcd_peer(name));
        let ca = self.etcd_ca.cert.display().to_string();
        vec![
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca.clone(),
            "--cert-file".into(),
            server.cert.display().to_string(),
            "--key-file".into(),
            server.key.display().to_string(),
            "--peer-client-cert-auth".into(),
            "--peer-trusted-ca-file".into(),
            ca,
            "--peer-cert-file".into(),
            peer.cert.display().to_string(),
            "--peer-key-file".into(),
            peer.key.display().to_string(),
        ]
    }

    /// The API server's flags for reaching etcd with its client certificate.
    pub fn apiserver_etcd_flags(&self) -> Vec<String> {
        vec![
            "--etcd-cafile".into(),
            self.etcd_ca.cert.display().to_string(),
            "--etcd-certfile".into(),
            self.apiserver_etcd_client.cert.display().to_string(),
            "--etcd-keyfile".into(),
            self.apiserver_etcd_client.key.display().to_string(),
        ]
    }

    /// The API server's flags for serving TLS with its certificate.
    pub fn apiserver_tls_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.apiserver.cert.display().to_string(),
            "--tls-key".into(),
            self.apiserver.key.display().to_string(),
        ]
    }

    /// etcdctl's flags for the API server's identity (what a debugging operator uses).
    pub fn etcdctl_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.etcd_ca.cert.display()),
            format!("--cert={}", self.apiserver_etcd_client.cert.display()),
            format!("--key={}", self.apiserver_etcd_client.key.display()),
        ]
    }
}

/// Makes every certificate of `spec` under `dir` (created if missing) and returns where they
/// are. Refuses, before writing anything, when a file of the set exists or an input is bad.
pub fn generate(dir: &Path, spec: &Spec) -> Result<Files> {
    let files = Files::at(dir);
    let mut seen = Vec::new();
    for m in &spec.etcd_members {
        check_member_name(&m.name)?;
        if seen.contains(&m.name) {
            return Err(Error::DuplicateMember {
                name: m.name.clone(),
            });
        }
        seen.push(m.name.clone());
        for h in &m.hosts {
            san(h)?;
        }
    }
    for h in &spec.api_hosts {
        san(h)?;
    }
    let mut every = vec![
        files.ca.clone(),
        files.apiserver.clone(),
        files.apiserver_etcd_client.clone(),
        files.etcd_ca.clone(),
    ];
    for m in &spec.etcd_members {
        every.push(files.etcd_server(&m.name));
        every.push(files.etcd_peer(&m.name));
    }
    for p in &every {
        for path in [&p.cert, &p.key] {
            if path.exists() {
                return Err(Error::Exists { path: path.clone() });
            }
        }
    }

    let now = OffsetDateTime::now_utc();
    let leaf_days = i64::try_from(spec.validity.as_secs() / 86_400)
        .unwrap_or(i64::MAX / 20)
        .max(1);
    let leaf_until = now + Duration::days(leaf_days);
    let ca_until = now + Duration::days(leaf_days.saturating_mul(10));

    let ca = make_ca("skiff-ca", now, ca_until)?;
    let etcd_ca = make_ca("skiff-etcd-ca", now, ca_until)?;

    private_dir(dir)?;
    private_dir(&dir.join("etcd"))?;
    write_pair(&files.ca, &ca.cert_pem, &ca.key.serialize_pem())?;
    write_pair(
        &files.etcd_ca,
        &etcd_ca.cert_pem,
        &etcd_ca.key.serialize_pem(),
    )?;

    let api_sans: Vec<String> = spec.api_hosts.clone();
    let leaf = Leaf {
        not_before: now,
        not_after: leaf_until,
    };
    leaf.make(
        &ca,
        "skiff-apiserver",
        &api_sans,
        &[ExtendedKeyUsagePurpose::ServerAuth],
        &files.apiserver,
    )?;
    leaf.make(
        &etcd_ca,
        "skiff-apiserver-etcd-client",
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
        &files.apiserver_etcd_client,
    )?;
    for m in &spec.etcd_members {
        private_dir(&dir.join("etcd").join(&m.name))?;
        // etcd 3.4's gRPC gateway dials the member itself with the serving certificate, so
        // with client certificate auth on, the serving certificate must be a client one too.
        let both = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.make(
            &etcd_ca,
            &m.name,
            &m.hosts,
            &both,
            &files.etcd_server(&m.name),
        )?;
        leaf.make(
            &etcd_ca,
            &m.name,
            &m.hosts,
            &both,
            &files.etcd_peer(&m.name),
        )?;
    }
    Ok(files)
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    key: KeyPair,
    cert_pem: String,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Generate {
        what: what.to_owned(),
        source,
    }
}

fn make_ca(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Ca> {
    let key = KeyPair::generate().map_err(gen_err(cn))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key).map_err(gen_err(cn))?;
    // The issuer keeps its own copy of the key; the CA's is written out.
    let issuer_key = KeyPair::from_pem(&key.serialize_pem()).map_err(gen_err(cn))?;
    Ok(Ca {
        issuer: Issuer::new(params, issuer_key),
        key,
        cert_pem: cert.pem(),
    })
}

struct Leaf {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Leaf {
    fn make(
        &self,
        ca: &Ca,
        cn: &str,
        hosts: &[String],
        usages: &[ExtendedKeyUsagePurpose],
        out: &Pair,
    ) -> Result<()> {
        let key = KeyPair::generate().map_err(gen_err(cn))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.subject_alt_names = hosts.iter().map(|h| san(h)).collect::<Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys sign; key encipherment is an RSA notion (RFC 5480).
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        let cert = params.signed_by(&key, &ca.issuer).map_err(gen_err(cn))?;
        write_pair(out, &cert.pem(), &key.serialize_pem())
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "skiff");
    dn
}

/// An IP address or a DNS name as a subject alternative name.
fn san(host: &str) -> Result<SanType> {
    let bad = || Error::BadHost {
        host: host.to_owned(),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(bad());
    }
    Ok(SanType::DnsName(host.try_into().map_err(|_| bad())?))
}

fn check_member_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadMemberName {
            name: name.to_owned(),
        })
    }
}

/// Makes `dir` (and its parents) with mode 0700. An existing directory is used only when no
/// one else may enter it: its mode is never changed (it may be `/etc` or a home directory).
fn private_dir(dir: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions());
            if mode & 0o077 != 0 {
                return Err(Error::OpenDirectory {
                    path: dir.to_owned(),
                    mode: mode & 0o777,
                });
            }
            Ok(())
        }
        Ok(_) => Err(io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

fn write_pair(pair: &Pair, cert_pem: &str, key_pem: &str) -> Result<()> {
    write_new(&pair.key, key_pem.as_bytes(), 0o600)?;
    write_new(&pair.cert, cert_pem.as_bytes(), 0o644)
}

/// Writes a file that must not exist yet, created with `mode` (a key is never readable by
/// others, not even for a moment).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skiff-pki-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn spec() -> Spec {
        Spec {
            etcd_members: vec![EtcdMember {
                name: "m0".into(),
                hosts: vec!["127.0.0.1".into(), "localhost".into()],
            }],
            api_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            validity: std::time::Duration::from_secs(86_400),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_directories_closed_to_other_users() {
        let d = tmp("modes");
        let files = generate(&d, &spec()).unwrap();
        for key in [
            &files.ca.key,
            &files.etcd_ca.key,
            &files.apiserver.key,
            &files.apiserver_etcd_client.key,
            &files.etcd_server("m0").key,
            &files.etcd_peer("m0").key,
        ] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
            let pem = fs::read_to_string(key).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        }
        for dir in [d.clone(), d.join("etcd"), d.join("etcd/m0")] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        assert!(
            fs::read_to_string(&files.apiserver.cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_others_may_enter_is_refused_and_left_as_it_was() {
        let d = tmp("open");
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let err = generate(&d, &spec()).unwrap_err();
        assert!(
            matches!(err, Error::OpenDirectory { mode: 0o755, .. }),
            "{err}"
        );
        assert_eq!(mode(&d), 0o755);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_existing_set_is_never_overwritten_and_nothing_is_written_on_refusal() {
        let d = tmp("exists");
        let files = generate(&d, &spec()).unwrap();
        let before = fs::read(&files.ca.key).unwrap();
        let err = generate(&d, &spec()).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        assert_eq!(fs::read(&files.ca.key).unwrap(), before);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_hosts_and_member_names_are_refused_before_anything_is_written() {
        for (member, host) in [
            ("../x", "127.0.0.1"),
            ("M0", "127.0.0.1"),
            ("", "127.0.0.1"),
            ("m0", "bad host"),
            ("m0", "a..b"),
            ("m0", "-a.b"),
            ("m0", ""),
        ] {
            let d = tmp("bad");
            let mut s = spec();
            s.etcd_members[0].name = member.into();
            s.etcd_members[0].hosts = vec![host.into()];
            assert!(generate(&d, &s).is_err(), "{member:?} {host:?} accepted");
            assert!(!d.exists(), "{member:?} {host:?} wrote {}", d.display());
        }
        let d = tmp("dup");
        let mut s = spec();
        s.etcd_members.push(s.etcd_members[0].clone());
        assert!(matches!(
            generate(&d, &s),
            Err(Error::DuplicateMember { .. })
        ));
        assert!(!d.exists());
    }

    fn openssl_verify(ca: &Path, cert: &Path, purpose: &str) -> bool {
        std::process::Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(ca)
            .arg(cert)
            .output()
            .expect("openssl (cargo xtask setup installs it)")
            .status
            .success()
    }

    #[test]
    fn each_certificate_chains_to_its_own_authority_only_and_for_its_purpose_only() {
        let d = tmp("chain");
        let f = generate(&d, &spec()).unwrap();
        let (ca, etcd_ca) = (&f.ca.cert, &f.etcd_ca.cert);
        assert!(openssl_verify(ca, &f.apiserver.cert, "sslserver"));
        assert!(!openssl_verify(ca, &f.apiserver.cert, "sslclient"));
        assert!(!openssl_verify(etcd_ca, &f.apiserver.cert, "sslserver"));
        // Only the etcd CA vouches for the certificate that opens etcd.
        assert!(openssl_verify(
            etcd_ca,
            &f.apiserver_etcd_client.cert,
            "sslclient"
        ));
        assert!(!openssl_verify(
            ca,
            &f.apiserver_etcd_client.cert,
            "sslclient"
        ));
        assert!(!openssl_verify(
            etcd_ca,
            &f.apiserver_etcd_client.cert,
            "sslserver"
        ));
        for p in [f.etcd_server("m0"), f.etcd_peer("m0")] {
            assert!(openssl_verify(etcd_ca, &p.cert, "sslserver"));
            assert!(openssl_verify(etcd_ca, &p.cert, "sslclient"));
            assert!(!openssl_verify(ca, &p.cert, "sslclient"));
        }
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&f.apiserver.cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        for want in ["IP Address:127.0.0.1", "DNS:localhost"] {
            assert!(text.contains(want), "{want} missing in {text}");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn flags_name_the_files_of_the_set() {
        let files = Files::at(Path::new("/etc/skiff/pki"));
        let etcd = files.etcd_flags("m0");
        assert!(etcd.contains(&"--client-cert-auth".to_owned()));
        assert!(etcd.contains(&"--peer-client-cert-auth".to_owned()));
        assert!(etcd.contains(&"/etc/skiff/pki/etcd/m0/server.crt".to_owned()));
        assert!(etcd.contains(&"/etc/skiff/pki/etcd/ca.crt".to_owned()));
        let api = files.apiserver_etcd_flags();
        assert!(api.contains(&"/etc/skiff/pki/apiserver-etcd-client.key".to_owned()));
        // The API server's etcd client certificate is signed by the etcd CA, not the cluster CA.
        assert!(api.contains(&"/etc/skiff/pki/etcd/ca.crt".to_owned()));
    }
}
