//! Server options (auth, TLS) and the files and environment a server starts with.
//!
//! The harness uses the config files in its own `nats/` folder (embedded at compile
//! time, so the published crate carries them): it writes them next to a small
//! top-level file that `include`s the ones a server needs, and passes every value
//! (ports, store, credentials, certificate paths) as environment variables, which
//! nats-server resolves for `$NAME` references.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{HarnessError, HarnessErrorKind};

const SINGLE_CONF: &str = include_str!("../nats/single.conf");
const CLUSTER_NODE_CONF: &str = include_str!("../nats/cluster-node.conf");
const AUTH_TOKEN_CONF: &str = include_str!("../nats/auth-token.conf");
const AUTH_USERS_CONF: &str = include_str!("../nats/auth-users.conf");
const AUTH_NKEY_CONF: &str = include_str!("../nats/auth-nkey.conf");
const TLS_CONF: &str = include_str!("../nats/tls.conf");
const MTLS_CONF: &str = include_str!("../nats/mtls.conf");

/// How clients authenticate to the server.
///
/// ```
/// use jetevents_testcontainers::{Auth, Permissions};
/// let token = Auth::Token("s3cret".into());
/// let user = Auth::UserPassword {
///     user: "app".into(),
///     password: "pw".into(),
///     permissions: Some(Permissions::publish_only(["dev.allowed.>"])),
/// };
/// let nkey = Auth::nkey();
/// assert!(matches!(nkey, Auth::Nkey(_)));
/// # let _ = (token, user);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// A shared token (`auth-token.conf`).
    Token(String),
    /// One user with a password and optional subject permissions (`auth-users.conf`).
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// Subject permissions; `None` allows everything.
        permissions: Option<Permissions>,
    },
    /// One user authenticated by an nkey (`auth-nkey.conf`).
    Nkey(NkeyUser),
}

impl Auth {
    /// Nkey authentication with a freshly generated user key pair.
    pub fn nkey() -> Self {
        Self::Nkey(NkeyUser::generate())
    }
}

/// Subjects a user may publish to and subscribe to.
///
/// ```
/// use jetevents_testcontainers::Permissions;
/// let p = Permissions::publish_only(["dev.allowed.>"]);
/// assert!(p.publish_allow.contains(&"dev.allowed.>".to_string()));
/// assert!(p.publish_allow.contains(&"$JS.API.>".to_string()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (wildcards allowed) the user may publish to.
    pub publish_allow: Vec<String>,
    /// Subjects (wildcards allowed) the user may subscribe to.
    pub subscribe_allow: Vec<String>,
}

impl Permissions {
    /// Publish only to `subjects`, plus what a JetStream client needs
    /// (`$JS.API.>`, `$JS.ACK.>`, `_INBOX.>`); subscribe to anything.
    pub fn publish_only<S: Into<String>>(subjects: impl IntoIterator<Item = S>) -> Self {
        let mut publish_allow: Vec<String> = subjects.into_iter().map(Into::into).collect();
        publish_allow.extend(["$JS.API.>", "$JS.ACK.>", "_INBOX.>"].map(String::from));
        Self {
            publish_allow,
            subscribe_allow: vec![">".into()],
        }
    }
}

/// A user nkey pair for [`Auth::Nkey`]; the server knows the public key, the client
/// signs with the seed.
#[derive(Clone)]
pub struct NkeyUser {
    seed: String,
    public_key: String,
}

impl std::fmt::Debug for NkeyUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NkeyUser")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl NkeyUser {
    /// Generates a new user key pair.
    ///
    /// ```
    /// let user = jetevents_testcontainers::NkeyUser::generate();
    /// assert!(user.public_key().starts_with('U'));
    /// assert!(user.seed().starts_with("SU"));
    /// ```
    pub fn generate() -> Self {
        let pair = nkeys::KeyPair::new_user();
        // A freshly generated pair always has its seed.
        let seed = pair.seed().unwrap_or_default();
        Self {
            seed,
            public_key: pair.public_key(),
        }
    }

    /// The seed (`SU...`) a client passes to `ConnectOptions::nkey`.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// The public key (`U...`) the server trusts.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }
}

/// Transport security for client connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP.
    #[default]
    None,
    /// TLS (`tls.conf`); clients trust the generated CA.
    Tls,
    /// Mutual TLS (`mtls.conf`); clients must also present a certificate signed by the CA.
    MutualTls,
}

/// Paths of the certificates generated for a TLS server (PEM files in its temp dir).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// The CA certificate clients must trust.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The server certificate (for 127.0.0.1 and localhost).
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }
    /// The server private key.
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    /// A client certificate signed by the CA, for mutual TLS.
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client-cert.pem")
    }
    /// The client certificate's private key.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }
}

fn config_err(what: &str, err: impl std::error::Error + Send + Sync + 'static) -> HarnessError {
    HarnessError::with_source(HarnessErrorKind::Config, what.to_string(), err)
}

/// Generates a CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate into `dir`.
pub(crate) fn generate_certificates(dir: &Path) -> Result<TlsFiles, HarnessError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let gen = |what: &str, e: rcgen::Error| config_err(what, e);

    let ca_key = KeyPair::generate().map_err(|e| gen("CA key", e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| gen("CA", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "jetevents test CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| gen("CA certificate", e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(|e| gen("leaf key", e))?;
        let mut params = CertificateParams::new(sans).map_err(|e| gen("leaf", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![eku];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| gen("leaf certificate", e))?;
        Ok::<_, HarnessError>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        "127.0.0.1",
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        "jetevents-test-client",
        vec!["jetevents-test-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let files = TlsFiles {
        dir: dir.to_path_buf(),
    };
    write(&files.ca_cert_path(), &ca_cert.pem())?;
    write(&files.server_cert_path(), &server_cert)?;
    write(&files.server_key_path(), &server_key)?;
    write(&files.client_cert_path(), &client_cert)?;
    write(&files.client_key_path(), &client_key)?;
    Ok(files)
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    fs::write(path, text).map_err(|e| config_err(&format!("writing {}", path.display()), e))
}

/// Route settings of one cluster node.
#[derive(Debug, Clone)]
pub(crate) struct ClusterNode {
    pub(crate) cluster_name: String,
    pub(crate) cluster_port: u16,
    /// Ports on 127.0.0.1 this node dials to reach its peers.
    pub(crate) routes: Vec<u16>,
    /// The route port on 127.0.0.1 this node tells its peers to dial.
    pub(crate) advertise_port: u16,
}

/// Everything a server process/container starts with.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) config_path: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) listen_host: String,
}

pub(crate) struct LaunchParams<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) server_name: &'a str,
    pub(crate) listen_host: &'a str,
    pub(crate) client_port: u16,
    pub(crate) http_port: u16,
    pub(crate) max_payload: u32,
    pub(crate) sync_interval: &'a str,
    pub(crate) jetstream: bool,
    pub(crate) auth: &'a Auth,
    pub(crate) tls: Option<(Tls, &'a TlsFiles)>,
    pub(crate) cluster: Option<&'a ClusterNode>,
}

fn quoted_list(items: &[String]) -> String {
    let inner: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", inner.join(", "))
}

/// Writes the config files into `dir` and returns how to start the server.
pub(crate) fn prepare(p: &LaunchParams<'_>) -> Result<Launch, HarnessError> {
    let dir = p.dir;
    let store = dir.join("store");
    fs::create_dir_all(&store).map_err(|e| config_err("creating the store dir", e))?;
    let mut env: Vec<(String, String)> = vec![
        ("NATS_SERVER_NAME".into(), p.server_name.into()),
        ("NATS_HOST".into(), p.listen_host.into()),
        ("NATS_PORT".into(), p.client_port.to_string()),
        ("NATS_HTTP_PORT".into(), p.http_port.to_string()),
        ("NATS_MAX_PAYLOAD".into(), p.max_payload.to_string()),
        ("NATS_JETSTREAM".into(), p.jetstream.to_string()),
        ("NATS_SYNC_INTERVAL".into(), p.sync_interval.to_owned()),
        ("NATS_STORE".into(), store.display().to_string()),
    ];
    write(&dir.join("single.conf"), SINGLE_CONF)?;
    let mut top = String::from("# Generated by jetevents-testcontainers.\n");
    if let Some(node) = p.cluster {
        write(&dir.join("cluster-node.conf"), CLUSTER_NODE_CONF)?;
        top.push_str("include ./cluster-node.conf\n");
        env.push(("NATS_CLUSTER_NAME".into(), node.cluster_name.clone()));
        env.push(("NATS_CLUSTER_PORT".into(), node.cluster_port.to_string()));
        let routes: Vec<String> = node
            .routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        env.push(("NATS_ROUTES".into(), quoted_list(&routes)));
        env.push((
            "NATS_CLUSTER_ADVERTISE".into(),
            format!("127.0.0.1:{}", node.advertise_port),
        ));
    } else {
        top.push_str("include ./single.conf\n");
    }
    match p.auth {
        Auth::None => {}
        Auth::Token(token) => {
            write(&dir.join("auth-token.conf"), AUTH_TOKEN_CONF)?;
            top.push_str("include ./auth-token.conf\n");
            env.push(("NATS_TOKEN".into(), format!("\"{token}\"")));
        }
        Auth::UserPassword {
            user,
            password,
            permissions,
        } => {
            write(&dir.join("auth-users.conf"), AUTH_USERS_CONF)?;
            top.push_str("include ./auth-users.conf\n");
            let all = Permissions {
                publish_allow: vec![">".into()],
                subscribe_allow: vec![">".into()],
            };
            let perms = permissions.as_ref().unwrap_or(&all);
            env.push(("NATS_USER".into(), format!("\"{user}\"")));
            env.push(("NATS_PASSWORD".into(), format!("\"{password}\"")));
            env.push((
                "NATS_PUBLISH_ALLOW".into(),
                quoted_list(&perms.publish_allow),
            ));
            env.push((
                "NATS_SUBSCRIBE_ALLOW".into(),
                quoted_list(&perms.subscribe_allow),
            ));
        }
        Auth::Nkey(user) => {
            write(&dir.join("auth-nkey.conf"), AUTH_NKEY_CONF)?;
            top.push_str("include ./auth-nkey.conf\n");
            env.push(("NATS_NKEY".into(), user.public_key().to_string()));
        }
    }
    if let Some((mode, files)) = p.tls {
        let (name, text) = match mode {
            Tls::MutualTls => ("mtls.conf", MTLS_CONF),
            _ => ("tls.conf", TLS_CONF),
        };
        if mode != Tls::None {
            write(&dir.join(name), text)?;
            top.push_str(&format!("include ./{name}\n"));
            env.push((
                "NATS_TLS_CERT".into(),
                files.server_cert_path().display().to_string(),
            ));
            env.push((
                "NATS_TLS_KEY".into(),
                files.server_key_path().display().to_string(),
            ));
            env.push((
                "NATS_TLS_CA".into(),
                files.ca_cert_path().display().to_string(),
            ));
        }
    }
    let config_path = dir.join("server.conf");
    write(&config_path, &top)?;
    Ok(Launch {
        config_path,
        env,
        listen_host: p.listen_host.to_string(),
    })
}
