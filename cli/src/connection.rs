//! Connecting: the library's environment variables, then a `nats` context,
//! then flags, each overriding the one before.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use jetevents::client::Client;
use jetevents::config::{Auth, Config, Secret};

use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Server URLs, comma separated (default: NATS_URL, the context's, or
    /// nats://127.0.0.1:4222).
    #[arg(long, short, global = true)]
    pub server: Option<String>,
    /// A `nats` CLI context by name (default: the selected one, when
    /// NATS_URL is unset).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Subject environment, the first subject token (default: JETEVENTS_ENV or dev).
    #[arg(long, global = true)]
    pub env: Option<String>,
    /// Credentials file (JWT and nkey seed).
    #[arg(long, global = true)]
    pub creds: Option<PathBuf>,
    /// Token.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// User name (with --password).
    #[arg(long, global = true, requires = "password")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, global = true, requires = "user")]
    pub password: Option<String>,
    /// How long connecting may take.
    #[arg(long, global = true, value_parser = crate::duration::parse)]
    pub connect_timeout: Option<Duration>,
}

impl ConnectionArgs {
    /// The configuration these settings give.
    pub fn config(&self) -> Result<Config, Failure> {
        let mut config = Config::from_env()?;
        match &self.context {
            Some(name) => crate::context::load(name)?.apply_to(&mut config)?,
            None if std::env::var_os("NATS_URL").is_none() => {
                if let Some(context) = crate::context::selected()? {
                    context.apply_to(&mut config)?;
                }
            }
            None => {}
        }
        if let Some(servers) = &self.server {
            config.servers = servers.split(',').map(|s| s.trim().to_owned()).collect();
        }
        if let Some(env) = &self.env {
            config.env.clone_from(env);
        }
        if let Some(creds) = &self.creds {
            config.auth = Auth::CredentialsFile(creds.clone());
        }
        if let Some(token) = &self.token {
            config.auth = Auth::Token(Secret::new(token));
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            config.auth = Auth::UserPassword {
                user: user.clone(),
                password: Secret::new(password),
            };
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout = timeout;
        }
        config.name = config.name.or_else(|| Some("jetevents-cli".to_owned()));
        Ok(config)
    }

    pub async fn connect(&self) -> Result<Client, Failure> {
        let config = self.config()?;
        let servers = config.servers.join(",");
        Client::connect(config)
            .await
            .map_err(|err| Failure::during(&format!("connecting to {servers}"), err))
    }
}
