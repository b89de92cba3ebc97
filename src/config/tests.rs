#![allow(clippy::unwrap_used)]
use super::*;

fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

#[test]
fn reads_every_auth_method_and_hides_secrets() {
    let config = Config::from_lookup(lookup(&[
        ("JETEVENTS_USER", "svc"),
        ("JETEVENTS_PASSWORD", "pa55word"),
    ]))
    .unwrap();
    assert!(matches!(&config.auth, Auth::UserPassword { user, .. } if user == "svc"));
    assert!(!format!("{config:?}").contains("pa55word"));

    let config = Config::from_lookup(lookup(&[(
        "JETEVENTS_NKEY_SEED",
        "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY",
    )]))
    .unwrap();
    assert!(matches!(config.auth, Auth::NkeySeed(_)));
    assert!(!format!("{config:?}").contains("SUACSSL3"));

    let config =
        Config::from_lookup(lookup(&[("JETEVENTS_CREDS_FILE", "/etc/nats/svc.creds")])).unwrap();
    assert!(matches!(config.auth, Auth::CredentialsFile(_)));
}

#[test]
fn refuses_contradictions_and_bad_values() {
    let both = Config::from_lookup(lookup(&[("JETEVENTS_TOKEN", "t"), ("JETEVENTS_USER", "u")]));
    assert!(matches!(
        both.unwrap_err().kind(),
        ConfigErrorKind::Conflict(_)
    ));

    let no_password = Config::from_lookup(lookup(&[("JETEVENTS_USER", "u")]));
    assert!(matches!(
        no_password.unwrap_err().kind(),
        ConfigErrorKind::InvalidValue { variable, .. } if variable == "JETEVENTS_PASSWORD"
    ));

    for (variable, value) in [
        ("JETEVENTS_ACK_TIMEOUT", "soon"),
        ("JETEVENTS_ACK_TIMEOUT", "5h"),
        ("JETEVENTS_TLS_REQUIRED", "maybe"),
        ("JETEVENTS_ENCODING", "xml"),
        ("JETEVENTS_PUBLISH_ATTEMPTS", "0"),
        ("JETEVENTS_PING_INTERVAL", "0s"),
    ] {
        let err = Config::from_lookup(lookup(&[(variable, value)])).unwrap_err();
        assert!(
            matches!(err.kind(), ConfigErrorKind::InvalidValue { variable: v, .. } if v == variable),
            "{variable}={value} gave {err}"
        );
        assert!(!err.to_string().contains(value), "error echoes the value");
    }

    let half_mtls = Config::from_lookup(lookup(&[("JETEVENTS_TLS_CERT", "/c.pem")]));
    assert!(matches!(
        half_mtls.unwrap_err().kind(),
        ConfigErrorKind::Conflict(_)
    ));
}

#[test]
fn durations_and_encoding() {
    let config = Config::from_lookup(lookup(&[
        ("JETEVENTS_CONNECT_TIMEOUT", "2m"),
        ("JETEVENTS_ACK_TIMEOUT", "3"),
        ("JETEVENTS_API_TIMEOUT", "12s"),
        ("JETEVENTS_PING_INTERVAL", "750ms"),
        ("JETEVENTS_ENCODING", "Structured"),
        ("JETEVENTS_TLS_REQUIRED", "true"),
    ]))
    .unwrap();
    assert_eq!(config.connect_timeout, Duration::from_secs(120));
    assert_eq!(config.ack_timeout, Duration::from_secs(3));
    assert_eq!(config.api_timeout, Duration::from_secs(12));
    assert_eq!(config.ping_interval, Duration::from_millis(750));
    assert_eq!(config.encoding, Encoding::Structured);
    assert!(config.tls.required);
}
