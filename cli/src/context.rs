//! The `nats` CLI's contexts: `~/.config/nats/context/NAME.json`, the selected
//! one named in `~/.config/nats/context.txt` (`$XDG_CONFIG_HOME` honoured), so
//! an operator's existing setup works unchanged.

use std::path::{Path, PathBuf};

use jetevents::config::{Auth, Config, Secret};
use serde::Deserialize;

use crate::failure::Failure;

/// The fields of a context file jetevents uses (the file has more).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NatsContext {
    url: String,
    token: String,
    user: String,
    password: String,
    creds: String,
    /// Path of an nkey seed file.
    nkey: String,
    cert: String,
    key: String,
    ca: String,
}

fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))
        .map(|dir| dir.join("nats"))
}

/// The context named `name`; an unknown name is an error.
pub fn load(name: &str) -> Result<NatsContext, Failure> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Failure::new(format!("invalid context name {name:?}")));
    }
    let dir = config_dir().ok_or_else(|| Failure::new("no HOME to find nats contexts in"))?;
    let path = dir.join("context").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|err| Failure::during(&format!("context {name:?} ({})", path.display()), err))?;
    serde_json::from_str(&text)
        .map_err(|err| Failure::during(&format!("context file {}", path.display()), err))
}

/// The context the `nats` CLI has selected (`nats context select`), if any.
pub fn selected() -> Result<Option<NatsContext>, Failure> {
    let Some(dir) = config_dir() else {
        return Ok(None);
    };
    let Ok(name) = std::fs::read_to_string(dir.join("context.txt")) else {
        return Ok(None);
    };
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    load(name).map(Some)
}

impl NatsContext {
    /// Writes the context's settings over `config` (only those it sets).
    pub fn apply_to(&self, config: &mut Config) -> Result<(), Failure> {
        if !self.url.is_empty() {
            config.servers = self.url.split(',').map(|u| u.trim().to_owned()).collect();
        }
        if !self.creds.is_empty() {
            config.auth = Auth::CredentialsFile(PathBuf::from(&self.creds));
        } else if !self.nkey.is_empty() {
            let seed = std::fs::read_to_string(&self.nkey)
                .map_err(|err| Failure::during(&format!("nkey file {}", self.nkey), err))?;
            config.auth = Auth::NkeySeed(Secret::new(seed.trim()));
        } else if !self.token.is_empty() {
            config.auth = Auth::Token(Secret::new(&self.token));
        } else if !self.user.is_empty() {
            config.auth = Auth::UserPassword {
                user: self.user.clone(),
                password: Secret::new(&self.password),
            };
        }
        let file = |path: &str| (!path.is_empty()).then(|| PathBuf::from(path));
        config.tls.ca_file = file(&self.ca).or(config.tls.ca_file.take());
        config.tls.client_cert = file(&self.cert).or(config.tls.client_cert.take());
        config.tls.client_key = file(&self.key).or(config.tls.client_key.take());
        Ok(())
    }
}
