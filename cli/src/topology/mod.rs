//! `topology plan | apply`: a declared topology against the server.
//!
//! Each declared resource gets one action: create, update in place, or
//! recreate (a change the server cannot make in place, such as a stream's
//! storage: deleting it loses its events, so apply refuses it without
//! `--allow-recreate`).

mod declaration;
pub mod permissions;
mod resources;

use std::fmt;
use std::process::ExitCode;

use jetevents::client::Client;

pub use declaration::Topology;
use resources::Resource;

use crate::cli::ApplyArgs;
use crate::failure::Failure;

/// `plan` exits with this when the server differs from the file.
const EXIT_CHANGES: u8 = 2;

/// One setting that differs.
#[derive(Debug)]
pub struct FieldChange {
    pub field: &'static str,
    pub actual: String,
    pub declared: String,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.field, self.actual, self.declared)
    }
}

#[derive(Debug)]
pub enum Action {
    Create,
    Update(Vec<FieldChange>),
    /// Holds every differing field; at least one cannot change in place.
    Recreate(Vec<FieldChange>),
}

/// Differences of one resource, sorted into what may change in place.
#[derive(Default)]
pub struct Diff {
    in_place: Vec<FieldChange>,
    recreate: Vec<FieldChange>,
}

impl Diff {
    /// Records `field` if the declared value (shown the same way as the
    /// actual one) differs.
    pub fn compare(
        &mut self,
        field: &'static str,
        actual: String,
        declared: String,
        in_place: bool,
    ) {
        if actual != declared {
            let change = FieldChange {
                field,
                actual,
                declared,
            };
            if in_place {
                self.in_place.push(change);
            } else {
                self.recreate.push(change);
            }
        }
    }

    pub fn action(mut self) -> Option<Action> {
        if !self.recreate.is_empty() {
            self.recreate.append(&mut self.in_place);
            Some(Action::Recreate(self.recreate))
        } else if !self.in_place.is_empty() {
            Some(Action::Update(self.in_place))
        } else {
            None
        }
    }
}

/// Streams first: groups live in them.
fn resources(topology: &Topology) -> Vec<Resource<'_>> {
    let streams = topology.streams.iter().map(Resource::Stream);
    let dead_letters = topology.dead_letters.iter().map(Resource::DeadLetters);
    let kv = topology.kv.iter().map(Resource::Kv);
    let groups = topology.groups.iter().map(Resource::Group);
    streams
        .chain(dead_letters)
        .chain(kv)
        .chain(groups)
        .collect()
}

async fn planned<'a>(
    client: &Client,
    topology: &'a Topology,
) -> Result<Vec<(Resource<'a>, Action)>, Failure> {
    let mut planned = Vec::new();
    for resource in resources(topology) {
        if let Some(action) = resource.plan(client).await? {
            planned.push((resource, action));
        }
    }
    Ok(planned)
}

fn describe(resource: &Resource<'_>, action: &Action) -> String {
    let list = |changes: &[FieldChange]| {
        changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match action {
        Action::Create => format!("+ create {resource}"),
        Action::Update(changes) => format!("~ update {resource}: {}", list(changes)),
        Action::Recreate(changes) => format!(
            "! recreate {resource}: {} (cannot change in place: deletes it and its data)",
            list(changes)
        ),
    }
}

pub async fn plan(client: &Client, topology: &Topology) -> Result<ExitCode, Failure> {
    let planned = planned(client, topology).await?;
    if planned.is_empty() {
        println!("No changes: the server matches the topology.");
        return Ok(ExitCode::SUCCESS);
    }
    for (resource, action) in &planned {
        println!("{}", describe(resource, action));
    }
    let count = |wanted: fn(&Action) -> bool| planned.iter().filter(|(_, a)| wanted(a)).count();
    println!(
        "Plan: {} to create, {} to update, {} to recreate.",
        count(|a| matches!(a, Action::Create)),
        count(|a| matches!(a, Action::Update(_))),
        count(|a| matches!(a, Action::Recreate(_))),
    );
    Ok(ExitCode::from(EXIT_CHANGES))
}

pub async fn apply(
    client: &Client,
    topology: &Topology,
    args: &ApplyArgs,
) -> Result<ExitCode, Failure> {
    let planned = planned(client, topology).await?;
    if planned.is_empty() {
        println!("No changes: the server matches the topology.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut refused = 0;
    for (resource, action) in &planned {
        let line = describe(resource, action);
        if matches!(action, Action::Recreate(_)) && !args.allow_recreate {
            println!("{line}: refused without --allow-recreate");
            refused += 1;
            continue;
        }
        resource
            .apply(client, action)
            .await
            .map_err(|err| Failure::new(format!("{line}: {err}")))?;
        println!("{line}: done");
    }
    if refused > 0 {
        return Err(Failure::new(format!(
            "{refused} change(s) need deleting and recreating; run apply with --allow-recreate to make them"
        )));
    }
    Ok(ExitCode::SUCCESS)
}
