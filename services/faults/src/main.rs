//! `chat-faults [--only SLUG,...] [--users N] [--out DIR]`: the fault suite against the
//! debug binaries next to this one (`make faults`). Prints the table of faults ×
//! outcomes, writes it to `DIR/table.md` (`target/faults`), and fails if any invariant
//! failed. Slugs: mysql-paused, mysql-killed, redis-restarted, llm-killed,
//! provider-failing, gateway-sigterm.

use std::path::PathBuf;
use std::process::ExitCode;

use chat_faults::faults::Fault;
use chat_faults::{Options, table};

#[tokio::main]
async fn main() -> ExitCode {
    report_exit(run().await)
}

#[allow(clippy::print_stderr)]
fn report_exit(outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chat-faults: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The next argument, the value of `flag`.
fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<String> {
    args.next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
}

/// Whether every fault passed.
#[allow(clippy::print_stdout)]
async fn run() -> anyhow::Result<bool> {
    let here = std::env::current_exe()?;
    let bin_dir = here.parent().map(PathBuf::from).unwrap_or_default();
    let mut out = PathBuf::from("target/faults");
    let mut options = Options {
        bin_dir,
        work_dir: PathBuf::new(),
        faults: Fault::ALL.to_vec(),
        users: 8,
        clients_per_user: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => {
                let slugs = value(&mut args, &arg)?;
                options.faults = slugs
                    .split(',')
                    .map(|slug| {
                        Fault::ALL
                            .into_iter()
                            .find(|fault| fault.slug() == slug.trim())
                            .ok_or_else(|| anyhow::anyhow!("no fault named {slug}"))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--users" => options.users = value(&mut args, &arg)?.parse()?,
            "--out" => out = PathBuf::from(value(&mut args, &arg)?),
            other => anyhow::bail!("unknown argument {other}; see the module docs"),
        }
    }
    options.work_dir = out.join("work");
    let rows = chat_faults::run(&options).await?;
    let markdown = table::markdown(&rows);
    println!("\n{markdown}");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("table.md"), &markdown)?;
    println!("written: {}", out.join("table.md").display());
    Ok(rows.iter().all(|row| row.failures().is_empty()))
}
