//! `jetevents`: the operator's command for services built on jetevents.
//!
//! It speaks events, not bytes: decoded CloudEvents, dead letters with their
//! reasons, consumer-group health, a declared topology (and the permissions
//! of its services), projections and sagas. Streams, raw
//! messages and KV browsing stay with the `nats` CLI.

mod cli;
mod connection;
mod context;
mod dlq;
mod duration;
mod failure;
mod filter;
mod groups;
mod projections;
mod publish;
mod render;
mod sagas;
mod stream;
mod tail;
mod topology;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command, DlqCommand, ProjectionsCommand, SagasCommand, TopologyCommand};
use failure::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return report(&Failure::from(err)),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => report(&failure),
    }
}

/// One line on stderr: operators grep logs and CI shows the last line.
fn report(failure: &Failure) -> ExitCode {
    eprintln!("error: {failure}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let connection = cli.connection;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "jetevents",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => tail::run(&connection.connect().await?, args).await,
        Command::Publish(args) => publish::run(&connection.connect().await?, args).await,
        Command::Dlq(dlq) => {
            let client = connection.connect().await?;
            let dead_letters = dlq.location.dead_letters(&client);
            match dlq.command {
                DlqCommand::List(args) => dlq::list(&dead_letters, args).await,
                DlqCommand::Show(args) => dlq::show(&dead_letters, args).await,
                DlqCommand::Redrive(args) => dlq::redrive(&dead_letters, args).await,
                DlqCommand::Delete(args) => dlq::delete(&dead_letters, args).await,
            }
        }
        Command::Projections(ProjectionsCommand::Status(args)) => {
            projections::status(&connection.connect().await?, args).await
        }
        Command::Projections(ProjectionsCommand::Rebuild(args)) => {
            projections::rebuild(&connection.connect().await?, args).await
        }
        Command::Sagas(SagasCommand::List(args)) => {
            sagas::list(&connection.connect().await?, args).await
        }
        Command::Sagas(SagasCommand::Show(args)) => {
            sagas::show(&connection.connect().await?, args).await
        }
        Command::Groups(args) => groups::run(&connection.connect().await?, args).await,
        Command::Topology(TopologyCommand::Plan(args)) => {
            // Read the file before connecting: a typo should not wait for a server.
            let declared = topology::Topology::read(&args.file)?;
            topology::plan(&connection.connect().await?, &declared).await
        }
        Command::Topology(TopologyCommand::Permissions(args)) => {
            // The subjects' environment, no server: the same settings as
            // every command.
            let env = connection.config()?.env;
            let declared = topology::Topology::read(&args.file)?;
            topology::permissions::run(&declared, &env, &args)
        }
        Command::Topology(TopologyCommand::Apply(args)) => {
            let declared = topology::Topology::read(&args.file)?;
            topology::apply(&connection.connect().await?, &declared, &args).await
        }
    }
}
