//! `runledger`: one binary, a subcommand per role. This file only parses the command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "runledger", version, about = "An event-sourced job platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The JSON Schemas of the envelope, commands and events, generated from the domain types.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
        /// The schemas directory.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum SchemasAction {
    /// Write every schema file.
    Write,
    /// Exit non-zero, naming the files, when a checked-in schema differs from the types.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Schemas { action, dir } => schemas(action, &dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn schemas(action: SchemasAction, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut drifted = Vec::new();
    for file in domain::schema::all() {
        let path = dir.join(&file.path);
        match action {
            SchemasAction::Write => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&path, &file.json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            SchemasAction::Check => {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(file.json.as_str()) {
                    drifted.push(path.display().to_string());
                }
            }
        }
    }
    if drifted.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "runledger: schemas differ from the types (run `runledger schemas write`):\n  {}",
        drifted.join("\n  ")
    );
    Ok(ExitCode::FAILURE)
}
