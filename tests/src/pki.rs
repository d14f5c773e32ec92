//! Test certificate authorities made with rcgen: serving certificates for
//! 127.0.0.1, client certificates with a CN and O, expired ones.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate is for.
pub enum Leaf<'a> {
    /// Serving certificate for these DNS names / IPs.
    Server(&'a [&'a str]),
    /// Client certificate: CN = user, each O = group.
    Client { cn: &'a str, orgs: &'a [&'a str] },
}

/// A self-signed CA whose certificate is in `file`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
    pub file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/name.crt`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
        let pem = issuer.pem();
        let file = dir.join(format!("{name}.crt"));
        std::fs::write(&file, &pem)?;
        Ok(Self { issuer, pem, file })
    }

    /// Issues a leaf written to `dir/<stem>.crt` and `.key`; `expired`
    /// makes one whose validity ended yesterday.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        leaf: Leaf<'_>,
        expired: bool,
    ) -> anyhow::Result<Pair> {
        let mut p = match leaf {
            Leaf::Server(names) => {
                let mut p = CertificateParams::new(
                    names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )?;
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                p.distinguished_name.push(DnType::CommonName, stem);
                p
            }
            Leaf::Client { cn, orgs } => {
                let mut p = CertificateParams::new(Vec::<String>::new())?;
                p.distinguished_name.push(DnType::CommonName, cn);
                for o in orgs {
                    p.distinguished_name.push(DnType::OrganizationName, *o);
                }
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                p
            }
        };
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if expired {
            let now = std::time::SystemTime::now();
            let day = std::time::Duration::from_secs(86_400);
            p.not_before = (now - 30 * day).into();
            p.not_after = (now - day).into();
        }
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let pair = Pair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&pair.cert, &pair.cert_pem)?;
        std::fs::write(&pair.key, &pair.key_pem)?;
        Ok(pair)
    }
}
