//! `topology`, connection settings and bad input, through the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{assert_one_line_failure, text, unique, World};

fn topology_file(world: &World, body: &str) -> String {
    topology_file_as(world, "toml", body)
}

fn topology_file_as(world: &World, extension: &str, body: &str) -> String {
    let path = world
        .home
        .path()
        .join(format!("{}.{extension}", unique("topology")));
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `topology ARGS`; its exit code and stdout.
fn topology(world: &World, args: &[&str]) -> (i32, String) {
    let output = world
        .command(&[&["topology"], args].concat())
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        text(&output.stdout) + &text(&output.stderr),
    )
}

#[tokio::test]
async fn topology_plan_apply_is_idempotent_and_reports_drift() {
    let world = World::new().await;
    let (stream, bucket, dlq) = (unique("T"), unique("kv"), unique("DL"));
    // Subjects of their own: the world's stream captures `{world.env}.>`.
    let file = topology_file(
        &world,
        &format!(
            r#"
[[stream]]
name = "{stream}"
subjects = ["{env}.topology.>"]
storage = "file"
max_age = "7d"

[[group]]
stream = "{stream}"
name = "billing"
filter_subjects = ["{env}.topology.>"]
max_deliver = 5
ack_wait = "30s"
deliver_policy = "all"

[[dead_letters]]
stream = "{dlq}"
subject_prefix = "{dlq}"

[[kv]]
bucket = "{bucket}"
history = 3
max_age = "1h"
"#,
            env = unique("t")
        ),
    );

    let (code, plan) = topology(&world, &["plan", &file]);
    assert_eq!(code, 2, "{plan}");
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("+ create")).count(),
        4,
        "{plan}"
    );
    let (code, applied) = topology(&world, &["apply", &file]);
    assert_eq!(code, 0, "{applied}");
    let (code, plan) = topology(&world, &["plan", &file]);
    assert_eq!(
        (code, plan.trim()),
        (0, "No changes: the server matches the topology.")
    );
    let (code, again) = topology(&world, &["apply", &file]);
    assert_eq!(
        (code, again.trim()),
        (0, "No changes: the server matches the topology.")
    );

    // Drift made behind the file's back: one setting that changes in place,
    // one group setting that cannot.
    let js = world.client.jetstream().unwrap();
    let mut info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let info_subject = info.subjects[0].clone();
    info.max_age = std::time::Duration::from_secs(3600);
    js.update_stream(info).await.unwrap();
    let group_stream = js.get_stream(&stream).await.unwrap();
    group_stream.delete_consumer("billing").await.unwrap();
    group_stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("billing".into()),
            filter_subject: info_subject.clone(),
            max_deliver: 5,
            ack_wait: std::time::Duration::from_secs(30),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();

    let (code, plan) = topology(&world, &["plan", &file]);
    assert_eq!(code, 2, "{plan}");
    assert!(
        plan.contains(&format!("~ update stream {stream}: max_age 1h -> 7d")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "! recreate group {stream}/billing: deliver_policy New -> All"
        )),
        "{plan}"
    );
    let (code, refused) = topology(&world, &["apply", &file]);
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused.contains("refused without --allow-recreate"),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("update stream {stream}: max_age 1h -> 7d: done")),
        "{refused}"
    );
    let (code, plan) = topology(&world, &["plan", &file]);
    assert_eq!(code, 2);
    assert_eq!(plan.lines().count(), 2, "only the group is left: {plan}");
    let (code, applied) = topology(&world, &["apply", "--allow-recreate", &file]);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(topology(&world, &["plan", &file]).0, 0);
}

/// One model, two formats: the same topology written in TOML and in YAML
/// plans the same changes, and once applied from one, the other is in sync.
#[tokio::test]
async fn topology_in_yaml_plans_like_the_same_in_toml() {
    let world = World::new().await;
    let (stream, bucket, subject) = (unique("Y"), unique("kv"), format!("{}.yaml.>", unique("y")));
    let toml = topology_file(
        &world,
        &format!(
            r#"
[[stream]]
name = "{stream}"
subjects = ["{subject}"]
storage = "memory"
max_age = "7d"

[[group]]
stream = "{stream}"
name = "billing"
max_deliver = 5
ack_wait = "30s"
deliver_policy = "new"

[[kv]]
bucket = "{bucket}"
history = 3
"#
        ),
    );
    let yaml = topology_file_as(
        &world,
        "yaml",
        &format!(
            r#"
stream:
  - name: {stream}
    subjects: ["{subject}"]
    storage: memory
    max_age: 7d
group:
  - stream: {stream}
    name: billing
    max_deliver: 5
    ack_wait: 30s
    deliver_policy: new
kv:
  - bucket: {bucket}
    history: 3
"#
        ),
    );
    let from_toml = topology(&world, &["plan", &toml]);
    assert_eq!(from_toml.0, 2, "{}", from_toml.1);
    assert_eq!(topology(&world, &["plan", &yaml]), from_toml);
    let (code, applied) = topology(&world, &["apply", &toml]);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(
        topology(&world, &["plan", &yaml]),
        (
            0,
            "No changes: the server matches the topology.\n".to_owned()
        )
    );
    // A drift the YAML file declares away is reported like the TOML one's.
    let drifted = yaml.replace(".yaml", "-drift.yml");
    std::fs::write(
        &drifted,
        std::fs::read_to_string(&yaml)
            .unwrap()
            .replace("max_deliver: 5", "max_deliver: 7"),
    )
    .unwrap();
    let (code, plan) = topology(&world, &["plan", &drifted]);
    assert_eq!(code, 2, "{plan}");
    assert!(
        plan.contains(&format!(
            "~ update group {stream}/billing: max_deliver 5 -> 7"
        )),
        "{plan}"
    );
}

/// `topology permissions`: the declared service's subjects, as a config
/// entry the server accepts and as JSON.
#[tokio::test]
async fn topology_permissions_of_a_declared_service() {
    let world = World::new().await;
    let file = topology_file_as(
        &world,
        "yml",
        r#"
group:
  - { stream: BOOKING, name: billing }
  - { stream: BOOKING, name: auditors }
dead_letters:
  - { stream: BILLING_DL, subject_prefix: dlbilling }
service:
  - name: billing
    publishes: [billing.invoice.issued.v1]
    groups: [billing]
    streams: [BILLING]
    claim_checks: [INVOICES]
    dead_letters: BILLING_DL
"#,
    );
    let json = world.ok(&[
        "topology",
        "permissions",
        &file,
        "--service",
        "billing",
        "-o",
        "json",
    ]);
    let permissions: serde_json::Value = serde_json::from_str(&json).unwrap();
    let publish: Vec<&str> = permissions["publish"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let env = &world.env;
    for subject in [
        format!("{env}.billing.invoice.issued.v1"),
        format!("{env}.billing.invoice.issued.v1.*"),
        "$JS.API.CONSUMER.MSG.NEXT.BOOKING.billing".to_owned(),
        "$JS.ACK.BOOKING.billing.>".to_owned(),
        "dlbilling.billing.>".to_owned(),
        "$JS.API.STREAM.CREATE.BILLING".to_owned(),
        "$O.INVOICES.>".to_owned(),
    ] {
        assert!(
            publish.contains(&subject.as_str()),
            "{subject}: {publish:?}"
        );
    }
    assert!(
        !publish.iter().any(|s| s.contains("auditors")),
        "{publish:?}"
    );

    let entry = world.ok(&["topology", "permissions", &file, "--service", "billing"]);
    assert!(
        entry.contains("user: \"billing\"\n  password: $BILLING_PASSWORD\n"),
        "{entry}"
    );
    let nkey = world.ok(&[
        "topology",
        "permissions",
        &file,
        "--service",
        "billing",
        "--nkey",
        "UABC",
    ]);
    assert!(nkey.contains("nkey: \"UABC\""), "{nkey}");
    // The server itself accepts the entry (`-t`: check the config, exit).
    if let Some(server) = std::env::var_os("JETEVENTS_NATS_SERVER_BIN") {
        let config = world.home.path().join("users.conf");
        std::fs::write(
            &config,
            format!("authorization {{\n  users: [\n{entry}\n  ]\n}}\n"),
        )
        .unwrap();
        let checked = std::process::Command::new(server)
            .args(["-t", "-c", config.to_str().unwrap()])
            .env("BILLING_PASSWORD", "pw")
            .output()
            .unwrap();
        assert!(checked.status.success(), "{}", text(&checked.stderr));
    }

    let output = world
        .command(&["topology", "permissions", &file, "--service", "shipping"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "no service \"shipping\"");
}

#[tokio::test]
async fn topology_plan_reports_storage_drift_as_a_recreate() {
    let world = World::new().await;
    let stream = unique("M");
    let subject = format!("{}.memory.>", unique("m"));
    world
        .client
        .jetstream()
        .unwrap()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    let file = topology_file(
        &world,
        &format!(
            "[[stream]]\nname = \"{stream}\"\nsubjects = [\"{subject}\"]\nstorage = \"file\"\n"
        ),
    );
    let (code, plan) = topology(&world, &["plan", &file]);
    assert_eq!(code, 2, "{plan}");
    assert!(
        plan.contains(&format!(
            "! recreate stream {stream}: storage Memory -> File"
        )),
        "{plan}"
    );
}

#[tokio::test]
async fn bad_input_fails_with_one_clear_line() {
    let world = World::new().await;
    let cases: [(&[&str], &str); 8] = [
        (
            &["tail", "NO_SUCH_STREAM"],
            "stream NO_SUCH_STREAM not found",
        ),
        (
            &[
                "publish",
                "--type",
                "booking.appointment.confirmed.v1",
                "{not json",
            ],
            "not valid JSON",
        ),
        (
            &["tail", &world.stream, "--subject", "a..b"],
            "invalid subject filter",
        ),
        (
            &["tail", &world.stream, "--type", "with space"],
            "invalid type filter",
        ),
        (
            &["tail", &world.stream, "--since", "yesterday"],
            "expected an RFC 3339 time",
        ),
        (&["dlq", "list", "--reason", "sad"], "unknown reason"),
        (
            &["tail", &world.stream, "--server", "nats://127.0.0.1:1"],
            "server unreachable",
        ),
        (
            &["tail", &world.stream, "--context", "missing"],
            "context \"missing\"",
        ),
    ];
    for (args, expected) in cases {
        assert_one_line_failure(&world.command(args).output().unwrap(), expected);
    }
    let bad_toml = world.home.path().join("bad.toml");
    std::fs::write(&bad_toml, "[[stream]]\nname = 1\n").unwrap();
    let output = world
        .command(&["topology", "plan", bad_toml.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "bad.toml");
    let bad_yaml = world.home.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "stream:\n  - name: [unclosed\n").unwrap();
    let output = world
        .command(&["topology", "plan", bad_yaml.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "bad.yaml");
    let output = world
        .command(&["topology", "plan", "topology.json"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "ends in .toml, .yaml or .yml");
}

#[tokio::test]
async fn wrong_credentials_fail_with_one_clear_line() {
    let server = jetevents_testcontainers::NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Token("right".into()))
        .start()
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let output = support::jetevents(&server.url(), "dev", home.path())
        .args(["groups", "--token", "wrong"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "authentication failed");
    let output = support::jetevents(&server.url(), "dev", home.path())
        .args(["groups", "--token", "right"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[tokio::test]
async fn nats_contexts_are_used_by_name_and_when_selected() {
    let world = World::new().await;
    let contexts = world.home.path().join("nats").join("context");
    std::fs::create_dir_all(&contexts).unwrap();
    let context = format!(r#"{{"description": "tests", "url": "{}"}}"#, world.url);
    std::fs::write(contexts.join("tests.json"), context).unwrap();
    let tail = || {
        let mut command = world.command(&["tail", &world.stream]);
        command.env_remove("NATS_URL");
        command
    };

    let output = tail().args(["--context", "tests"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::write(
        world.home.path().join("nats").join("context.txt"),
        "tests\n",
    )
    .unwrap();
    let output = tail().output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[tokio::test]
async fn completions_and_help_are_printed() {
    let world = World::new().await;
    let bash = world.ok(&["completions", "bash"]);
    assert!(
        bash.contains("jetevents") && bash.contains("redrive"),
        "{}",
        &bash[..200]
    );
    let help = world.ok(&["tail", "--help"]);
    assert!(
        help.contains("Examples:") && help.contains("--follow"),
        "{help}"
    );
}
