//! The certificates and keys of a test cluster, made fresh for each one: a CA, the API server's
//! serving certificate (for its loopback address), an admin client certificate in
//! `system:masters`, and the key that signs service-account tokens.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// PEM files in a cluster's directory.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl Pki {
    /// Writes everything into `dir` for a server on `ip`.
    pub fn create(dir: &Path, ip: IpAddr) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "globaldns-test-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate().unwrap();
        let mut serving = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        serving.subject_alt_names.push(SanType::IpAddress(ip));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer).unwrap();

        let admin_key = KeyPair::generate().unwrap();
        let mut admin = CertificateParams::new(Vec::<String>::new()).unwrap();
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer).unwrap();

        let sa_key = KeyPair::generate().unwrap();

        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca_cert: write("ca.crt", ca_cert.pem()),
            serving_cert: write("apiserver.crt", serving_cert.pem()),
            serving_key: write("apiserver.key", serving_key.serialize_pem()),
            admin_cert: write("admin.crt", admin_cert.pem()),
            admin_key: write("admin.key", admin_key.serialize_pem()),
            sa_key: write("sa.key", sa_key.serialize_pem()),
            sa_pub: write("sa.pub", sa_key.public_key_pem()),
        }
    }
}
